"""`sftc preflight`: is this node ready for the GPU stages, and does the GPU plan hold? This node's CUDA, devices and
memory against configs/nemo/finetune.yaml, Triton's FP8 kernel, the base checkpoint and free disk for what the chain
will write; then the GPU plan of the full profile (gpu_plan.py), which any node can check. Every item says which
machine it speaks of; the same report serves the command, the `gpu_preflight` asset check and the validation report.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from sftc_assets.checkpoints.convert import plan_conversion, triton_fp8_check
from sftc_assets.checkpoints.safetensors_io import CheckpointError
from sftc_assets.training.gpu_plan import GpuPlan, LaunchChecks, build_gpu_plan
from sftc_core.checks import FAIL, NOT_CHECKED, PASS, THIS_NODE, WARN, Check, checks_table, failures
from sftc_core.configs import FinetuneConfig
from sftc_core.gpu import GpuGateError, GpuProbe, probe_gpus, require_gpus
from sftc_core.settings import Settings
from sftc_core.text import format_bytes


@dataclass(frozen=True)
class PreflightReport:
    checks: tuple[Check, ...]
    require_gpu: bool
    plan: GpuPlan

    @property
    def ready(self) -> bool:
        return not failures(self.checks)

    @property
    def failures(self) -> list[Check]:
        return failures(self.checks)

    def as_dict(self) -> dict:
        return {
            "ready": self.ready,
            "require_gpu": self.require_gpu,
            "checks": [check.as_dict() for check in self.checks],
        }

    def table(self, appendix: str = "") -> str:
        """The checks, then `appendix` (the command's cost estimate), the verdict last."""
        verdict = "READY" if self.ready else "NOT READY: " + ", ".join(f"{c.name} ({c.scope})" for c in self.failures)
        return "\n".join([checks_table(self.checks), *(["", appendix] if appendix else []), "", verdict])


def run_preflight(
    settings: Settings,
    *,
    require_gpu: bool = True,
    check_nemo: bool = True,
    probe: GpuProbe | None = None,
    launch_checks: LaunchChecks | None = None,
) -> PreflightReport:
    """The checklist. `require_gpu=False` (the toy profile's CPU node) leaves this node's GPU items unchecked."""
    finetune = settings.finetune  # validated when the settings were loaded: a broken file never gets this far
    found = (
        f"{finetune.nodes} node(s) x {finetune.gpus_per_node} GPU(s) x {format_bytes(finetune.gpu_memory_bytes)}, "
        f"peft {finetune.peft}"
    )
    checks = [Check("finetune config", THIS_NODE, PASS, f"a valid {finetune.source}", found)]
    if require_gpu:
        checks += _gpu_checks(probe or probe_gpus(fp8_check=triton_fp8_check), finetune)
    else:
        checks.append(Check("gpu", THIS_NODE, NOT_CHECKED, "not required (CPU node of the toy profile)", "not probed"))
    checks += _checkpoint_checks(settings)
    plan = build_gpu_plan(settings, launch_checks=launch_checks, check_nemo=check_nemo)
    return PreflightReport((*checks, *plan.checks), require_gpu, plan)


def _gpu_checks(probe: GpuProbe, finetune: FinetuneConfig) -> list[Check]:
    checks = [
        Check(
            "cuda",
            THIS_NODE,
            PASS if probe.cuda_available else FAIL,
            "CUDA available to torch",
            probe.describe(),
            "" if probe.cuda_available else "run on a GPU node (the gpu pool, tag sftc/node=gpu)",
        )
    ]
    needed = f"{finetune.gpus_per_node} GPU(s) x {format_bytes(finetune.gpu_memory_bytes)} (x {finetune.nodes} node(s))"
    big_enough = sum(1 for d in probe.devices if d.total_memory_bytes >= finetune.gpu_memory_bytes)
    found = f"{big_enough} of {probe.device_count} device(s) big enough on this node"
    try:
        require_gpus("sft_model (nemo)", finetune.gpus_per_node, finetune.gpu_memory_bytes, probe)
        checks.append(Check("gpus", THIS_NODE, PASS, needed, found))
    except GpuGateError:
        checks.append(
            Check(
                "gpus",
                THIS_NODE,
                FAIL,
                needed,
                found,
                f"a node with the GPUs, or gpus_per_node / gpu_memory_gb in {finetune.source}",
            )
        )
    fp8 = PASS if probe.triton_fp8 else (WARN if probe.cuda_available else NOT_CHECKED)  # no CUDA already fails above
    checks.append(
        Check(
            "triton fp8",
            THIS_NODE,
            fp8,
            "Triton FP8 kernel (else torch on the GPU, slower)",
            probe.triton_detail,
            "" if fp8 == PASS else "pip install -e '.[gpu]' on the GPU node",
        )
    )
    return checks


def _checkpoint_checks(settings: Settings) -> list[Check]:
    """The base checkpoint, checked as the conversion will check it, and disk for the BF16 copy (and NeMo's)."""
    paths = settings.paths
    base = settings.base_checkpoint_dir
    needed = f"a block-FP8 checkpoint at {base}"
    checks = []
    if base.is_dir():
        try:
            plan = plan_conversion(base)
        except CheckpointError as exc:
            checks.append(
                Check(
                    "base checkpoint", THIS_NODE, FAIL, needed, str(exc), "download the missing or broken files again"
                )
            )
            bf16_bytes = None
        else:
            bf16_bytes = plan.total_size
            checks.append(
                Check(
                    "base checkpoint",
                    THIS_NODE,
                    PASS,
                    needed,
                    f"{len(plan.shards)} shard(s), BF16 size {format_bytes(bf16_bytes)}",
                )
            )
    else:
        toy = settings.profile.model.kind == "toy"
        found = f"{base} not there" + (" (the base_checkpoint asset builds it)" if toy else "")
        checks.append(
            Check(
                "base checkpoint",
                THIS_NODE,
                WARN if toy else FAIL,
                needed,
                found,
                "" if toy else "download the release to model.base_checkpoint_path",
            )
        )
        expected = settings.profile.compute.expected_checkpoint_bytes
        bf16_bytes = 2 * expected if expected else None  # FP8 weights double in BF16: an upper bound

    if bf16_bytes is None:
        checks.append(Check("disk", THIS_NODE, NOT_CHECKED, "free space for the BF16 checkpoint", "size unknown"))
        return checks
    copies = (0 if paths.bf16_checkpoint.is_dir() else 1) + (1 if settings.train_backend == "nemo" else 0)
    needed_bytes = copies * bf16_bytes
    where = _existing_parent(settings.data_dir)
    free = shutil.disk_usage(where).free
    what = (
        f"{format_bytes(needed_bytes)} ({copies} x BF16 size: conversion"
        + (", NeMo import" if settings.train_backend == "nemo" else "")
        + ")"
    )
    ok = free >= needed_bytes
    checks.append(
        Check(
            "disk",
            THIS_NODE,
            PASS if ok else FAIL,
            what,
            f"{format_bytes(free)} free at {where}",
            "" if ok else f"free space at {where} or point SFTC_DATA_DIR elsewhere",
        )
    )
    return checks


def _existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path
