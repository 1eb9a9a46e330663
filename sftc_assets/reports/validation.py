"""The CPU validation report in two parts: the toy chain (each stage PASS / FAIL / NOT RUN with its checks and
figures, the first failing stage named as the cause, and a failed planted-cue check with which of its preconditions
hold) and the GPU plan of the full profile (each check PASS / FAIL / NOT CHECKED with its reason, fix and
arithmetic: the list `sftc preflight` prints). "Ready for GPU deployment: YES"
only when both pass; the environment and what a CPU cannot test beside them.

No Dagster here: the asset gathers stage outcomes from the instance, builds the GPU plan and hands both to
`build_report`.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sftc_assets.backtest import cue_preconditions
from sftc_assets.training.lora_rehearsal import CHECK_NAME as REHEARSAL_CHECK
from sftc_core import cost
from sftc_core.checks import FAIL as CHECK_FAIL
from sftc_core.checks import NOT_CHECKED, TOY_CHAIN, Check, failures
from sftc_core.checks import PASS as CHECK_PASS
from sftc_core.checks import WARN as CHECK_WARN
from sftc_core.io import BeforeSwap, atomic_write_json, atomic_write_text
from sftc_core.manifest import package_versions
from sftc_core.nemo_format import NemoDataError
from sftc_core.target_format import TargetFormat
from sftc_core.text import format_duration, format_number, markdown_table

# The toy chain in dependency order (asset keys of the design); the NeMo import is the one GPU-only asset.
CHAIN_STAGES = (
    "raw_xml",
    "thesis_jsonl",
    "hf_splits",
    "base_checkpoint",
    "nemo_jsonl",
    "bf16_checkpoint",
    "sft_model",
    "eval_csv",
    "backtest_report",
)
GPU_ONLY_STAGES = ("nemo_model",)

PASS, FAIL, NOT_RUN = "PASS", "FAIL", "NOT RUN"
# The toy chain's canary: the signal planted in the sample theses must come through (backtest_report's check).
CANARY = "planted_cue_recovered"
# Its preconditions that the stages' own checks decide: (stage, its checks that must have passed).
STAGE_PRECONDITIONS = {
    "the splits are ordered": ("hf_splits", ("splits_disjoint_and_ordered",)),
    "training converged": ("sft_model", ("validation_loss_decreased", "training_loss_stable")),
}

# What a CPU node cannot prove, whatever the toy chain and the GPU plan say.
NOT_TESTABLE_ON_CPU = (
    "The Triton FP8 -> BF16 kernel: bf16_checkpoint ran the bit-identical torch path on CPU instead.",
    "The NeMo import of the BF16 checkpoint (nemo_model) and NeMo fine-tuning: sft_model ran the Hugging Face backend.",
    "bf16 autocast and tensor / pipeline / expert parallelism across GPUs: the GPU plan estimates their memory, "
    "it does not run them.",
    "Throughput on GPUs: the CPU figures say nothing about tokens/s or conversion GB/s on the GPU nodes.",
    "vLLM / SGLang on GPUs: their CUDA kernels, tensor / pipeline / expert parallelism across nodes, the LoRA adapter "
    "on the FP8 base (vLLM's LoRA MoE path needs a GPU); `sftc evaluate --dry-run` in the full profile prints the GPU "
    "serving plan.",
    "`sftc gpu-check` on a GPU node proves these in ten minutes, each step against the result in "
    "configs/gpu_check.yaml.",
)


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    severity: str = "ERROR"
    description: str = ""


@dataclass
class StageOutcome:
    """What happened to one asset: `materialized` in the runs considered, `error` when its step failed."""

    asset: str
    materialized: bool
    partitions: list[str] = field(default_factory=list)
    materialized_at: str | None = None
    run_id: str | None = None
    figures: dict = field(default_factory=dict)
    checks: list[CheckOutcome] = field(default_factory=list)
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error or any(not c.passed and c.severity == "ERROR" for c in self.checks):
            return FAIL
        return PASS if self.materialized else NOT_RUN


def environment_summary(profile_name: str, train_backend: str) -> dict:
    try:
        import torch

        cuda = torch.cuda.is_available()
        devices = torch.cuda.device_count() if cuda else 0
    except ImportError:
        cuda, devices = False, 0
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cuda_available": cuda,
        "cuda_devices": devices,
        "profile": profile_name,
        "train_backend": train_backend,
        "packages": package_versions(),
    }


def _reasons(stages: list[StageOutcome]) -> list[str]:
    """Why the toy chain did not pass: the first failing stage is the cause, later failures and gaps follow from it."""
    reasons, cause = [], None
    for stage in stages:
        if stage.status == FAIL:
            failed = [
                f"{c.name}" + (f" ({c.description})" if c.description else "")
                for c in stage.checks
                if not c.passed and c.severity == "ERROR"
            ]
            what = stage.error or f"check(s) failed: {'; '.join(failed)}"
            reasons.append(
                f"{stage.asset} failed: {what}"
                if cause is None
                else f"{stage.asset} failed after {cause} (look there first): {what}"
            )
            cause = cause or stage.asset
        elif stage.status == NOT_RUN:
            reasons.append(f"{stage.asset} was not materialized" + (f" (downstream of {cause})" if cause else ""))
    return reasons


def _stage(stages: list[StageOutcome], asset: str) -> StageOutcome | None:
    return next((stage for stage in stages if stage.asset == asset), None)


def canary_preconditions(stages: list[StageOutcome], nemo_dir: Path, target_format: TargetFormat) -> list[Check] | None:
    """When planted_cue_recovered failed, which of its preconditions hold: the cue reaches the training prompts, the
    labels are not scrambled (the NeMo JSONL, and the backtest's test theses), the splits are ordered and training
    converged (the stages' checks). None when it did not fail."""
    backtest = _stage(stages, "backtest_report")
    if backtest is None or not any(check.name == CANARY and not check.passed for check in backtest.checks):
        return None
    try:
        cues, missing = cue_preconditions.training_cues(nemo_dir, target_format), ""
    except (FileNotFoundError, NemoDataError) as exc:
        cues, missing = None, str(exc)
    figures = backtest.figures
    test = (figures["cue_agrees_with_label"], figures["cued_rows"]) if "cue_agrees_with_label" in figures else None
    data = cue_preconditions.data_preconditions(cues, test, missing)
    return [*data, *(_stage_precondition(stages, name) for name in STAGE_PRECONDITIONS)]


def _stage_precondition(stages: list[StageOutcome], name: str) -> Check:
    asset, names = STAGE_PRECONDITIONS[name]
    needed = f"{asset}'s checks {' and '.join(names)} passed"
    stage = _stage(stages, asset)
    outcomes = [check for check in (stage.checks if stage else []) if check.name in names]
    if not outcomes:
        found = f"{asset} has no outcome of {' or '.join(names)} in this validation"
        return Check(name, TOY_CHAIN, NOT_CHECKED, needed, found)
    figures = stage.figures
    loss = ""
    if "final_val_loss" in figures:
        first, last = (format_number(figures[key]) for key in ("initial_val_loss", "final_val_loss"))
        loss = f"validation loss {first} -> {last}; "
    said = [
        f"{c.name} {'PASS' if c.passed else 'FAIL'}" + (f" ({c.description})" if c.description else "")
        for c in outcomes
    ]
    found = loss + ", ".join(said)
    if not all(check.passed for check in outcomes):
        return Check(name, TOY_CHAIN, CHECK_FAIL, needed, found, f"see {asset}'s failed check above")
    return Check(name, TOY_CHAIN, CHECK_PASS if len(outcomes) == len(names) else NOT_CHECKED, needed, found)


def _canary_reason(preconditions: list[Check]) -> str:
    """One line naming the cause of a failed canary where a precondition names it, or saying that none does."""
    broken = [check for check in preconditions if check.status == CHECK_FAIL]
    if broken:
        named = [f"{check.name}: {check.found}" + (f". Fix: {check.fix}" if check.fix else "") for check in broken]
        return f"{CANARY}'s preconditions that do not hold: " + "; ".join(named)
    held = [check.name for check in preconditions if check.status == CHECK_PASS]
    unknown = [check.name for check in preconditions if check.status != CHECK_PASS]
    parts = [f"hold: {', '.join(held)}"] if held else []
    parts += [f"not checked: {', '.join(unknown)}"] if unknown else []
    cause = "none of those checked names the cause"
    if not unknown:
        cause = "the cause lies in what the model learnt from them, or in the evaluation"
    return f"{CANARY}'s preconditions {'; '.join(parts)}: {cause}"


def fine_tune_launch(stages: list[StageOutcome], slurm_present: bool) -> dict:
    """How sft_model's fine-tune was launched (its metadata), and whether this node had Slurm to launch it on."""
    figures = next((stage.figures for stage in stages if stage.asset == "sft_model"), {})
    keys = ("launcher", "nodes", "world_size", "slurm_job_id", "pending_s", "pending_reason")
    return {**{key: figures[key] for key in keys if key in figures}, "slurm_present": slurm_present}


def evaluation_engine(stages: list[StageOutcome]) -> str | None:
    """The engine and version that answered eval_csv (its metadata), e.g. "vllm 0.32.0"."""
    return next((stage.figures.get("engine") for stage in stages if stage.asset == "eval_csv"), None)


def _serving_line(engine: str | None) -> str:
    if not engine:
        return "- Evaluation served by: unknown (eval_csv did not report an engine)"
    if engine.startswith("vllm "):
        return (
            f"- Evaluation served by: {engine} on this node's CPU, the GPU run's engine: its DeepSeek-V3 model "
            "class, MLA attention (its CPU kernel, the release's 576-wide latent), grouped MoE routing, weight "
            "loader (the MTP layer skipped), tokenizer and stop rules, started by the GPU plan's command builder "
            "less the GPUs"
        )
    return f"- Evaluation served by: {engine}, not the GPU run's engine (vLLM): its serving code was not rehearsed"


def fine_tune_method(stages: list[StageOutcome]) -> str | None:
    """sft_model's peft as its metadata reports it (lora | none), None when it reported none."""
    return next((stage.figures.get("peft") for stage in stages if stage.asset == "sft_model"), None)


def _method_line(peft: str | None, stages: list[dict]) -> str:
    if peft == "lora":
        return (
            "- Fine-tune method: LoRA on the GPU recipe's targets (configs/nemo/finetune.yaml), adapter and merged "
            "model written"
        )
    if peft == "none":
        full = (
            "- Fine-tune method: a full fine-tune, not the GPU recipe's LoRA (the toy's LoRA does not learn its "
            "planted cue in budget: docs/toy-recipe.md)"
        )
        checks = [c for stage in stages if stage["asset"] == "sft_model" for c in stage["checks"]]
        rehearsal = next((c for c in checks if c["name"] == REHEARSAL_CHECK), None)
        if rehearsal is None:
            return (
                full
                + "; the LoRA path (targets, adapter, merge) is proven by tests/test_training_hf.py, not by this run"
            )
        if rehearsal["passed"]:
            return f"{full}; beside it, {rehearsal['description']} (sft_model's check {REHEARSAL_CHECK})"
        return f"{full}; the recipe's LoRA rehearsed beside it FAILED: {rehearsal['description']}"
    return "- Fine-tune method: unknown (sft_model did not report one)"


def _launch_line(launch: dict) -> str:
    if "launcher" not in launch:
        return "- Fine-tune launch: unknown (sft_model did not report one)"
    job = f", Slurm job {launch['slurm_job_id']}" if launch.get("slurm_job_id") else ""
    line = (
        f"- Fine-tune launch: `{launch['launcher']}` launcher, {launch.get('nodes', '?')} node(s), "
        f"world size {launch.get('world_size', '?')}{job}"
    )
    if "pending_s" in launch:
        why = f" ({launch['pending_reason']})" if launch.get("pending_reason") else ""
        line += f"; started after {format_duration(launch['pending_s'])} pending{why} (to within one poll of its state)"
    if launch["launcher"] != "slurm":
        line += (
            "; Slurm present on this node, but not used"
            if launch["slurm_present"]
            else "; no Slurm on this node (sinfo did not answer), so not a multi-node job"
        )
    return line


def build_report(
    stages: list[StageOutcome],
    *,
    gpu_plan: list[Check],
    environment: dict,
    git: dict,
    generated_at: dt.datetime,
    validation_run: str | None,
    slurm_present: bool = False,
    estimate: dict | None = None,
    canary: list[Check] | None = None,
) -> dict:
    """Both parts and the verdict: ready for GPU only when every toy stage passed and no GPU-plan check failed;
    `estimate`: what the full profile's GPU run will cost (sftc_core/cost.py's JSON), measured where a run gave it;
    `canary`: the preconditions of a failed planted-cue check (`canary_preconditions`)."""
    toy_reasons = _reasons(stages) + ([_canary_reason(canary)] if canary else [])
    toy_passed = not toy_reasons and bool(stages)
    if not stages:
        toy_reasons = ["no stage of the toy chain was found"]
    plan_failures = failures(gpu_plan)
    plan_reasons = [
        f"GPU plan: {check.name} failed: {check.found}" + (f". Fix: {check.fix}" if check.fix else "")
        for check in plan_failures
    ]
    ready = toy_passed and not plan_failures
    reasons = toy_reasons + plan_reasons
    if ready:
        others = [f"{c.name} {c.status}" for c in gpu_plan if c.status != CHECK_PASS]
        plan_passed = len(gpu_plan) - len(others)
        reasons = [
            f"all {len(stages)} stages of the toy chain passed with their checks on CPU",
            f"the GPU plan of the full profile holds: {plan_passed} of {len(gpu_plan)} checks passed, none failed"
            + (f" ({', '.join(others)}: see below)" if others else ""),
        ]
    # A warning holds no verdict back, but it is what the GPU run meets first: said beside the verdict, not only below.
    reasons += [
        f"warning: GPU plan: {check.name}: {check.found}" + (f". Fix: {check.fix}" if check.fix else "")
        for check in gpu_plan
        if check.status == CHECK_WARN
    ]
    return {
        "generated_at": generated_at.isoformat(timespec="seconds"),
        "validation_run": validation_run,
        "git_commit": git.get("git_commit", "unknown"),
        "git_dirty": git.get("git_dirty"),
        "environment": environment,
        "fine_tune_launch": fine_tune_launch(stages, slurm_present),
        "evaluation_engine": evaluation_engine(stages),
        "fine_tune_method": fine_tune_method(stages),
        "toy_chain": {"passed": toy_passed, "reasons": [] if toy_passed else toy_reasons},
        "stages": [{**asdict(stage), "status": stage.status} for stage in stages],
        "planted_cue_preconditions": [check.as_dict() for check in canary] if canary else None,
        "passed": sum(stage.status == PASS for stage in stages),
        "failed": sum(stage.status == FAIL for stage in stages),
        "not_run": sum(stage.status == NOT_RUN for stage in stages),
        "gpu_plan": {
            "passed": not plan_failures,
            "checks": [check.as_dict() for check in gpu_plan],
            "estimate": estimate,
        },
        "gpu_only_stages": list(GPU_ONLY_STAGES),
        "not_testable_on_cpu": list(NOT_TESTABLE_ON_CPU),
        "ready_for_gpu": ready,
        "reasons": reasons,
    }


def _figure_text(value: object) -> str:
    return format_number(value) if isinstance(value, float) else str(value)


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def render_markdown(report: dict) -> str:
    env = report["environment"]
    verdict = "YES" if report["ready_for_gpu"] else "NO"
    plan = [Check.from_dict(check) for check in report["gpu_plan"]["checks"]]
    lines = [
        "# CPU validation report",
        "",
        f"**Ready for GPU deployment: {verdict}**",
        "",
        *[f"- {reason}" for reason in report["reasons"]],
        "",
        f"- Date: {report['generated_at']}",
        f"- Commit: `{report['git_commit']}`" + (" (uncommitted changes)" if report["git_dirty"] else ""),
        f"- Validation run: `{report['validation_run'] or 'none (latest materializations)'}`",
        f"- Environment: Python {env['python']} on {env['platform']}, {env['cpu_count']} CPUs, "
        f"CUDA {'available' if env['cuda_available'] else 'not available'}, "
        f"profile `{env['profile']}`, backend `{env['train_backend']}`",
        _launch_line(report["fine_tune_launch"]),
        _serving_line(report.get("evaluation_engine")),
        _method_line(report["fine_tune_method"], report["stages"]),
        "- Packages: " + ", ".join(f"{name} {version}" for name, version in env["packages"].items()),
        "",
        f"## Part 1, the toy chain: {_verdict(report['toy_chain']['passed'])} "
        f"({report['passed']} passed, {report['failed']} failed, {report['not_run']} not run)",
        "",
    ]
    summary_rows = [
        {
            "stage": stage["asset"],
            "status": stage["status"],
            "partitions": f"{len(stage['partitions'])} ({stage['partitions'][0]}..{stage['partitions'][-1]})"
            if stage["partitions"]
            else "",
            "checks": ", ".join(f"{c['name']} {'PASS' if c['passed'] else 'FAIL'}" for c in stage["checks"]) or "none",
            "materialized": stage["materialized_at"] or "",
        }
        for stage in report["stages"]
    ]
    lines += [markdown_table(summary_rows, max_cell=200), ""]
    for stage in report["stages"]:
        lines += [f"### {stage['asset']}: {stage['status']}", ""]
        if stage["error"]:
            lines.append(f"- error: {stage['error']}")
        for check in stage["checks"]:
            mark = "PASS" if check["passed"] else f"FAIL ({check['severity']})"
            lines.append(
                f"- check `{check['name']}`: {mark}" + (f": {check['description']}" if check["description"] else "")
            )
            if check["name"] == CANARY and report.get("planted_cue_preconditions"):
                lines += [_precondition_line(Check.from_dict(c)) for c in report["planted_cue_preconditions"]]
        lines += [f"- {name}: {_figure_text(value)}" for name, value in stage["figures"].items()]
        lines.append("")
    counts = {status: sum(c.status == status for c in plan) for status in ("PASS", "FAIL", "WARN", "NOT CHECKED")}
    lines += [
        f"## Part 2, the GPU plan of the full profile: {_verdict(report['gpu_plan']['passed'])} "
        f"({', '.join(f'{n} {status.lower()}' for status, n in counts.items() if n)})",
        "",
        "The same checks as `sftc preflight` (which adds the checks of the node it runs on).",
        "",
        markdown_table(
            [
                {
                    "check": c.name,
                    "scope": c.scope,
                    "status": c.status,
                    "found": c.found,
                    "fix": c.fix if c.status != "PASS" else "",
                }
                for c in plan
            ],
            max_cell=400,
        ),
        "",
    ]
    for check in plan:
        if check.details:
            lines += [
                f"### {check.name}: {check.status}",
                "",
                f"Needed: {check.needed}.",
                "",
                *[f"- {line}" for line in check.details],
                "",
            ]
    estimate = report["gpu_plan"].get("estimate")
    lines += [
        "### What the GPU run will cost",
        "",
        *(cost.markdown(estimate) if estimate else ["No estimate: configs/cluster.yaml has no `estimate:` section."]),
        "",
    ]
    lines += [
        "## Not tested without a GPU",
        "",
        f"- GPU-only assets left out of the CPU validation: {', '.join(report['gpu_only_stages'])}",
        *[f"- {item}" for item in report["not_testable_on_cpu"]],
        "",
    ]
    return "\n".join(lines)


def _precondition_line(check: Check) -> str:
    fix = f". Fix: {check.fix}" if check.status == CHECK_FAIL else ""
    return f"  - precondition, {check.name}: {check.status}: {check.found}{fix}"


def write_report(report: dict, reports_dir: Path, stamp: BeforeSwap | None = None) -> tuple[Path, Path]:
    """`validation_report.md` and its JSON twin, each written atomically (with `stamp`'s marker)."""
    md_path = atomic_write_text(reports_dir / "validation_report.md", render_markdown(report), stamp)
    json_path = atomic_write_json(reports_dir / "validation_report.json", report, stamp)
    return md_path, json_path
