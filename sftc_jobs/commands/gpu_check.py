"""`sftc gpu-check`: the GPU-day check. On a GPU node, each step of configs/gpu_check.yaml in a child process of its
own within its time limit (sftc_assets/reports/gpu_check.py), then reports/gpu_check.{md,json}; exit 1 on any FAIL.
`--dry-run` lists the steps, what each proves, its expected result and limit, and what this node lacks."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sftc_core.settings import Settings
from sftc_jobs.commands.outputs import add_force, writing_output


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "gpu-check",
        help=(
            "on a GPU node: prove the GPU path in under 10 minutes "
            "(CUDA, Triton kernel, HF on CUDA, NeMo, serving, gpu tests)"
        ),
        description=(
            "Run what only a GPU can prove, each step against the result written down in configs/gpu_check.yaml and "
            "within its own time limit (the limits add up to total_limit_s, 10 minutes): CUDA and the devices; the "
            "Triton FP8 kernel bit-exact on awkward shapes and its GB/s against a device copy; the toy's inputs; the "
            "Hugging Face backend on CUDA (the loss falls, tokens/s); NeMo's import, LoRA steps, merge and export of "
            "the toy through the local launcher, then the export evaluated (where the NeMo environment is present); "
            "the toy served by vLLM or SGLang (where installed); the gpu-marked tests. Writes "
            "<data dir>/reports/gpu_check.md and .json (environment, GPU, driver and library versions, each step "
            "PASS / FAIL / SKIPPED with its figure and expected value), the steps' logs under "
            "<data dir>/gpu_check/logs; exit 1 on any FAIL. The toy profile's "
            "model and data, whatever SFTC_PROFILE says."
        ),
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the steps, their expected results and time limits, and what this node lacks; run nothing",
    )
    parser.add_argument(
        "--only", type=_names, metavar="STEP,...", help="run only these steps (names as --dry-run lists them)"
    )
    parser.add_argument("--skip", type=_names, metavar="STEP,...", help="leave these steps out")
    parser.add_argument("--json", action="store_true", help="print the report (or the dry run's plan) as JSON")
    # One step in this process: how the check runs each step in a child of its own.
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    add_force(parser)
    parser.set_defaults(func=run_gpu_check)


def _step_argv(work_dir: Path) -> Callable[[str, Path], list[str]]:
    def argv(name: str, result: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "sftc_jobs.cli",
            "gpu-check",
            "--step",
            name,
            "--work-dir",
            str(work_dir),
            "--result",
            str(result),
        ]

    return argv


def run_gpu_check(args: argparse.Namespace, settings: Settings) -> int:
    import datetime as dt

    from sftc_assets.reports import gpu_check
    from sftc_core.manifest import git_state

    if args.step:
        return _one_step(args, settings)
    steps = gpu_check.select_steps(args.only, args.skip)
    if args.dry_run:
        rows = gpu_check.plan(settings, steps)
        print(json.dumps(rows, indent=2) if args.json else gpu_check.plan_text(rows, settings.gpu_check))
        return 0
    reports, work = settings.paths.reports, settings.data_dir / "gpu_check"
    md, js = reports / "gpu_check.md", reports / "gpu_check.json"

    def show(outcome) -> None:
        print(
            f"{outcome.name}: {outcome.status} in {outcome.seconds:g} s of {outcome.limit_s:g}: {outcome.figure}",
            file=sys.stderr,
            flush=True,
        )

    with writing_output(args, [md, js, work], option="gpu-check's output") as stamp:
        shutil.rmtree(work, ignore_errors=True)  # the last check's scratch (its marker says sftc wrote it)
        work.mkdir(parents=True)
        started = time.monotonic()
        outcomes = gpu_check.run_steps(steps, settings.gpu_check, work, _step_argv(work), on_outcome=show)
        stamp(work, work)
        report = gpu_check.build_report(
            outcomes,
            config=settings.gpu_check,
            environment=gpu_check.gpu_environment(settings, outcomes),
            git=git_state(),
            generated_at=dt.datetime.now(dt.UTC),
            seconds=time.monotonic() - started,
        )
        gpu_check.write_report(report, reports, stamp)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        counts = report["counts"]
        print(
            f"gpu-check {'PASSED' if report['passed'] else 'FAILED'}: "
            f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIPPED']} skipped "
            f"in {report['seconds']:.0f} s; report {md} (and {js.name})"
        )
    return 0 if report["passed"] else 1


def _one_step(args: argparse.Namespace, settings: Settings) -> int:
    """The child: one step with the toy profile, its result in --result (the parent reads it)."""
    from sftc_assets.reports.gpu_check import STEP_NAMES, run_step_here, stop_on_sigterm
    from sftc_assets.reports.gpu_steps import StepContext

    if args.step not in STEP_NAMES or args.work_dir is None or args.result is None:
        raise ValueError(f"--step {args.step!r}: expected one of {', '.join(STEP_NAMES)} with --work-dir and --result")
    execute = None
    if args.step == "nemo":
        from sftc_platform.launchers import jobs
        from sftc_platform.launchers.plan import Launch

        launch = Launch.from_settings(settings, "local")  # one node: the toy's NeMo run through the launcher layer

        def execute(step):
            return jobs.run(step, launch)

    toy = settings.model_copy(update={"profile": settings.profiles["toy"]})
    stop_on_sigterm()
    run_step_here(args.step, StepContext(toy, args.work_dir, execute), args.result)
    return 0
