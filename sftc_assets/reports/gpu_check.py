"""`sftc gpu-check`: on a GPU node, in a bounded time, what only a GPU can prove, each step against the result
written down beforehand in configs/gpu_check.yaml; the report `reports/gpu_check.{md,json}` (environment, GPU,
driver and library versions, each step PASS / FAIL / SKIPPED with its figure and expected value).

Each step (gpu_steps.py) runs in a child process of its own, started by `run_steps` with the step's time limit: a
step past it is stopped (SIGTERM to its process group, which stops what it launched, then SIGKILL) and fails, and
a crash in one step (a CUDA error, a segfault in a kernel) is that step's FAIL, not the end of the check. Steps
need what came before them: without a CUDA device the GPU steps are SKIPPED, without the toy's inputs those that
train or serve it. The dry run lists the steps, their expected results and limits, and what this node lacks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from sftc_assets.reports import gpu_steps
from sftc_assets.reports.gpu_steps import FAIL, PASS, SKIPPED, StepContext, StepResult
from sftc_assets.reports.validation import environment_summary
from sftc_core.configs import GpuCheckConfig
from sftc_core.io import BeforeSwap, atomic_write_json, atomic_write_text
from sftc_core.settings import Settings
from sftc_core.text import markdown_table

# Packages whose versions the report names, beside the environment summary's own.
GPU_PACKAGES = ("triton", "transformers", "peft", "accelerate", "vllm", "sglang")
# How long a step stopped at its limit may take to clean up (stop the jobs and servers it started) before SIGKILL.
STOP_GRACE_S = 20.0


@dataclass(frozen=True)
class Step:
    name: str
    proves: str
    expected: Callable[[GpuCheckConfig], str]
    run: Callable[[StepContext], StepResult]
    needs_cuda: bool = True
    needs_toy: bool = False
    # Why the step would be SKIPPED (or fail) on this node, known without running it (the dry run shows it).
    lacking: Callable[[Settings], str | None] = lambda settings: None


def _shapes(config: GpuCheckConfig) -> str:
    return ", ".join("x".join(map(str, shape)) for shape in config.triton_kernel.shapes)


STEPS: tuple[Step, ...] = (
    Step(
        "cuda",
        "CUDA works: the devices torch sees, a bf16 matmul on each, the driver and CUDA versions",
        lambda c: f"at least {c.cuda.min_devices} CUDA device(s), a finite bf16 matmul on each",
        gpu_steps.cuda,
        needs_cuda=False,
    ),
    Step(
        "triton_kernel",
        "the Triton FP8 -> BF16 kernel of the conversion, against the torch math and the memory system",
        lambda c: (
            f"bit-exact against the torch math on {len(c.triton_kernel.shapes)} shapes ({_shapes(c)}); GB/s >= "
            f"{c.triton_kernel.min_copy_ratio:.0%} of a device copy of as many bytes "
            f"on {'x'.join(map(str, c.triton_kernel.bandwidth_shape))}"
        ),
        gpu_steps.triton_kernel,
        lacking=lambda s: gpu_steps.triton_missing(),
    ),
    Step(
        "toy_inputs",
        "the toy's NeMo JSONL from the sample theses and its BF16 checkpoint, built on this node (CPU work)",
        lambda c: "training, validation and test pairs, and a toy DeepSeek-V3 that loads in transformers",
        gpu_steps.toy_inputs,
        needs_cuda=False,
    ),
    Step(
        "hf_cuda",
        "the Hugging Face backend on CUDA (bf16 autocast): the toy profile's fine-tune learns",
        lambda c: (
            f"final / initial validation loss <= {c.hf_cuda.max_val_loss_ratio:g}, "
            f"parse rate >= {c.hf_cuda.min_parse_rate:.0%}; tokens/s recorded"
        ),
        gpu_steps.hf_cuda,
        needs_toy=True,
    ),
    Step(
        "nemo",
        "NeMo on the toy DeepSeek-V3: import_ckpt, LoRA steps, merge and HF export through the local launcher "
        "(one node, one GPU), the export evaluated",
        lambda c: (
            f"a NeMo checkpoint (context/, weights/); over {c.nemo.steps} LoRA steps "
            "the last quarter's mean loss below the first's; "
            "an export without LoRA tensors that loads in transformers, its validation loss below the base model's"
        ),
        gpu_steps.nemo,
        needs_toy=True,
        lacking=gpu_steps.nemo_missing,
    ),
    Step(
        "serving",
        "the serving path: hf_cuda's fine-tuned toy served by vLLM or SGLang on one GPU, "
        "answered through /v1/completions",
        lambda c: (
            f"every test prompt answered, parse rate >= {c.serving.min_parse_rate:.0%}, "
            "actions agree with the in-process generate "
            f">= {c.serving.min_agreement:.0%}"
        ),
        gpu_steps.serving,
        needs_toy=True,
        lacking=gpu_steps.serving_missing,
    ),
    Step(
        "gpu_tests",
        "the `gpu`-marked tests of the repository",
        lambda c: (
            f"pytest -m '{c.gpu_tests.marker}': none failed, at most {c.gpu_tests.max_skipped} skipped, "
            "at least one passed"
        ),
        gpu_steps.gpu_tests,
    ),
)
STEP_NAMES = tuple(step.name for step in STEPS)


@dataclass
class Outcome:
    """One step as the report shows it."""

    name: str
    status: str
    figure: str
    expected: str
    proves: str
    limit_s: float
    seconds: float
    figures: dict
    details: list[str]
    log: str | None

    @classmethod
    def skipped(cls, step: Step, config: GpuCheckConfig, why: str) -> Outcome:
        return cls(
            step.name,
            SKIPPED,
            why,
            step.expected(config),
            step.proves,
            config.steps[step.name].limit_s,
            0.0,
            {},
            [],
            None,
        )


def select_steps(only: list[str] | None = None, skip: list[str] | None = None) -> list[Step]:
    """The steps to run, in their order: all of them, or `only` these, less `skip`; an unknown name is an error."""
    for name in [*(only or []), *(skip or [])]:
        if name not in STEP_NAMES:
            raise ValueError(f"gpu-check step {name!r}: expected one of {', '.join(STEP_NAMES)}")
    return [step for step in STEPS if (not only or step.name in only) and step.name not in (skip or [])]


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def blocked_by(step: Step, done: dict[str, Outcome]) -> str | None:
    """Why `step` cannot run after the outcomes so far (a step that did not run does not block)."""
    if step.needs_cuda and "cuda" in done and done["cuda"].status != PASS:
        return f"needs a working CUDA device; step cuda: {done['cuda'].figure}"
    if step.needs_toy and "toy_inputs" in done and done["toy_inputs"].status != PASS:
        return f"needs the toy's inputs; step toy_inputs: {done['toy_inputs'].figure}"
    return None


def _stop(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the step's process group (it stops the jobs and servers it started), SIGKILL after `grace_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip()) or "(empty log)"


def run_child(
    argv: list[str], limit_s: float, log_path: Path, result_path: Path, grace_s: float = STOP_GRACE_S
) -> tuple[StepResult, float]:
    """Run one step's process (its output to `log_path`) for at most `limit_s`; its result, or a FAIL saying why
    there is none."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        code = process.wait(limit_s)
    except subprocess.TimeoutExpired:
        _stop(process, grace_s)
        seconds = time.monotonic() - started
        return StepResult(
            FAIL,
            f"stopped after its limit of {limit_s:g} s (configs/gpu_check.yaml)",
            details=[f"log {log_path}: {_log_tail(log_path)}"],
        ), seconds
    except BaseException:  # Ctrl-C: the step goes with the check
        _stop(process, grace_s)
        raise
    seconds = time.monotonic() - started
    if result_path.is_file():
        return gpu_steps.read_result(result_path), seconds
    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    return StepResult(
        FAIL, f"the step's process ended ({how}) without a result", details=[f"log {log_path}: {_log_tail(log_path)}"]
    ), seconds


def run_steps(
    steps: list[Step],
    config: GpuCheckConfig,
    work_dir: Path,
    child_argv: Callable[[str, Path], list[str]],
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Every step in order, each in its own process (`child_argv(name, result_path)`) within its limit."""
    done: dict[str, Outcome] = {}
    for step in steps:
        why = blocked_by(step, done)
        if why:
            outcome = Outcome.skipped(step, config, why)
        else:
            log, result = work_dir / "logs" / f"{step.name}.log", work_dir / "results" / f"{step.name}.json"
            limit = config.steps[step.name].limit_s
            found, seconds = run_child(child_argv(step.name, result), limit, log, result)
            outcome = Outcome(
                step.name,
                found.status,
                found.figure,
                step.expected(config),
                step.proves,
                limit,
                round(seconds, 1),
                found.figures,
                found.details,
                str(log),
            )
        done[step.name] = outcome
        if on_outcome is not None:
            on_outcome(outcome)
    return list(done.values())


def stop_on_sigterm() -> None:
    """In a step's process: SIGTERM (its limit) becomes an exception, so what the step started (a launched job, a
    server) is stopped on the way out, as on Ctrl-C."""

    def stop(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)


def run_step_here(name: str, context: StepContext, result_path: Path) -> StepResult:
    """The child's side: run the step, write its result (an exception is the step's FAIL, its traceback in the log)."""
    import logging

    step = next(s for s in STEPS if s.name == name)
    try:
        result = step.run(context)
    except Exception as exc:
        logging.getLogger("sftc.gpu_check").exception("step %s failed", name)
        result = StepResult(FAIL, f"{type(exc).__name__}: {' '.join(str(exc).split())[:600]}")
    gpu_steps.write_result(result_path, result)
    return result


# --- the report -----------------------------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def gpu_environment(settings: Settings, outcomes: list[Outcome]) -> dict:
    """The environment summary with the GPU's view from the cuda step, the NeMo version from the nemo step and
    the GPU packages."""
    environment = environment_summary(settings.profile_name, settings.train_backend)
    environment["packages"] = {**environment["packages"], **{name: _version(name) for name in GPU_PACKAGES}}
    by_name = {o.name: o for o in outcomes}
    cuda = by_name.get("cuda")
    environment["gpu"] = cuda.figures if cuda is not None else {}
    nemo = by_name.get("nemo")
    environment["nemo"] = nemo.figures.get("nemo") if nemo is not None and nemo.figures else None
    serving = by_name.get("serving")
    environment["serving_engine"] = (
        f"{serving.figures['engine']} {serving.figures['version']}" if serving is not None and serving.figures else None
    )
    return environment


def build_report(
    outcomes: list[Outcome],
    *,
    config: GpuCheckConfig,
    environment: dict,
    git: dict,
    generated_at: dt.datetime,
    seconds: float,
) -> dict:
    counts = {status: sum(o.status == status for o in outcomes) for status in (PASS, FAIL, SKIPPED)}
    return {
        "generated_at": generated_at.isoformat(timespec="seconds"),
        "git_commit": git.get("git_commit", "unknown"),
        "git_dirty": git.get("git_dirty"),
        "environment": environment,
        "total_limit_s": config.total_limit_s,
        "seconds": round(seconds, 1),
        "passed": counts[FAIL] == 0,
        "counts": counts,
        "steps": [asdict(o) for o in outcomes],
    }


def render_markdown(report: dict) -> str:
    env, counts = report["environment"], report["counts"]
    gpu = env.get("gpu") or {}
    devices = (
        ", ".join(f"{d['name']} ({d['memory_gb']:g} GB, sm {d['compute_capability']})" for d in gpu.get("devices", []))
        or "none"
    )
    lines = [
        "# GPU check",
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}: "
        f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIPPED]} skipped** "
        f"in {report['seconds']:.0f} s (limits add up to at most {report['total_limit_s']:g} s)",
        "",
        f"- Date: {report['generated_at']}",
        f"- Commit: `{report['git_commit']}`" + (" (uncommitted changes)" if report["git_dirty"] else ""),
        f"- Machine: Python {env['python']} on {env['platform']}, {env['cpu_count']} CPUs",
        f"- GPUs: {devices}; driver {gpu.get('driver_version') or 'unknown'}, "
        f"CUDA {gpu.get('torch_cuda') or 'none'}, cuDNN {gpu.get('cudnn') or 'none'}",
        f"- NeMo: {env.get('nemo') or 'not run'}; serving engine: {env.get('serving_engine') or 'not run'}",
        "- Packages: " + ", ".join(f"{name} {version}" for name, version in env["packages"].items()),
        "",
        markdown_table(
            [
                {
                    "step": s["name"],
                    "status": s["status"],
                    "figure": s["figure"],
                    "expected": s["expected"],
                    "seconds": f"{s['seconds']:g} / {s['limit_s']:g}",
                }
                for s in report["steps"]
            ],
            max_cell=400,
        ),
        "",
    ]
    for s in report["steps"]:
        lines += [
            f"## {s['name']}: {s['status']}",
            "",
            f"- proves: {s['proves']}",
            f"- expected: {s['expected']}",
            f"- found: {s['figure']}",
        ]
        lines += [f"- {line}" for line in s["details"]]
        if s["log"]:
            lines.append(f"- log: `{s['log']}`")
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict, reports_dir: Path, stamp: BeforeSwap | None = None) -> tuple[Path, Path]:
    md = atomic_write_text(Path(reports_dir) / "gpu_check.md", render_markdown(report), stamp)
    js = atomic_write_json(Path(reports_dir) / "gpu_check.json", report, stamp)
    return md, js


def plan(settings: Settings, steps: list[Step]) -> list[dict]:
    """The dry run: each step, what it proves, its expected result and limit, and what this node lacks for it."""
    config = settings.gpu_check
    devices = cuda_device_count()
    rows = []
    for step in steps:
        lacking = [
            why
            for why in (
                None if devices or not step.needs_cuda else "no CUDA device on this node",
                step.lacking(settings),
            )
            if why
        ]
        if step.name == "cuda" and not devices:
            lacking = ["no CUDA device on this node: cuda would FAIL and the GPU steps be SKIPPED"]
        rows.append(
            {
                "step": step.name,
                "limit_s": config.steps[step.name].limit_s,
                "proves": step.proves,
                "expected": step.expected(config),
                "here": "; ".join(lacking) or "can run",
            }
        )
    return rows


def plan_text(rows: list[dict], config: GpuCheckConfig) -> str:
    total = sum(row["limit_s"] for row in rows)
    lines = [
        f"sftc gpu-check: {len(rows)} step(s), limits {total:g} s of at most {config.total_limit_s:g} s "
        "(configs/gpu_check.yaml)",
        "",
    ]
    for row in rows:
        lines += [
            f"{row['step']} (limit {row['limit_s']:g} s)",
            f"  proves:   {row['proves']}",
            f"  expected: {row['expected']}",
            f"  here:     {row['here']}",
            "",
        ]
    return "\n".join(lines).rstrip()
