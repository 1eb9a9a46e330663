"""`sftc preflight`: is this node ready for the GPU stages? CUDA, devices and memory against
configs/nemo/finetune.yaml, Triton's FP8 kernel, the base checkpoint, free disk for what the chain will
write, and NeMo importable in its own environment. The same report serves the command and an asset check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from sftc_assets.checkpoints.convert import plan_conversion, triton_fp8_check
from sftc_assets.checkpoints.safetensors_io import CheckpointError
from sftc_assets.training.nemo_runner import entry_env
from sftc_core.configs import FinetuneConfig
from sftc_core.gpu import GpuGateError, GpuProbe, probe_gpus, require_gpus
from sftc_core.settings import Settings
from sftc_core.text import format_bytes

Status = Literal["pass", "fail", "warn", "skip"]
NEMO_IMPORT = "import nemo.collections.llm"


@dataclass(frozen=True)
class PreflightItem:
    check: str
    status: Status
    needed: str
    found: str


@dataclass(frozen=True)
class PreflightReport:
    items: tuple[PreflightItem, ...]
    require_gpu: bool

    @property
    def ready(self) -> bool:
        return not any(item.status == "fail" for item in self.items)

    @property
    def failures(self) -> list[PreflightItem]:
        return [item for item in self.items if item.status == "fail"]

    def as_dict(self) -> dict:
        return {"ready": self.ready, "require_gpu": self.require_gpu, "items": [asdict(item) for item in self.items]}

    def table(self) -> str:
        rows = [("check", "status", "needed", "found"), *((i.check, i.status.upper(), i.needed, i.found) for i in self.items)]
        widths = [max(len(row[c]) for row in rows) for c in range(3)]
        lines = ["  ".join([*(row[c].ljust(widths[c]) for c in range(3)), row[3]]) for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        verdict = "READY" if self.ready else "NOT READY: " + ", ".join(item.check for item in self.failures)
        return "\n".join([*lines, "", verdict])


def run_preflight(
    settings: Settings,
    *,
    require_gpu: bool = True,
    check_nemo: bool = True,
    probe: GpuProbe | None = None,
    nemo_timeout_s: float = 300,
) -> PreflightReport:
    """The checklist. `require_gpu=False` (the toy profile's CPU node) marks the GPU and NeMo items as not required."""
    finetune = settings.finetune  # validated when the settings were loaded: a broken file never gets this far
    found = f"{finetune.nodes} node(s) x {finetune.gpus_per_node} GPU(s) x {format_bytes(finetune.gpu_memory_bytes)}, peft {finetune.peft}"
    items = [PreflightItem("finetune config", "pass", f"a valid {finetune.source}", found)]

    if require_gpu:
        probe = probe or probe_gpus(fp8_check=triton_fp8_check)
        items += _gpu_items(probe, finetune)
    else:
        items.append(PreflightItem("gpu", "skip", "not required (CPU node of the toy profile)", "not probed"))

    items += _checkpoint_items(settings)

    if not check_nemo or not require_gpu:
        items.append(PreflightItem("nemo", "skip", NEMO_IMPORT, "not checked"))
    else:
        items.append(_nemo_item(settings.nemo_python, nemo_timeout_s))
    return PreflightReport(tuple(items), require_gpu)


def _gpu_items(probe: GpuProbe, finetune: FinetuneConfig) -> list[PreflightItem]:
    items = [PreflightItem("cuda", "pass" if probe.cuda_available else "fail", "CUDA available to torch", probe.describe())]
    needed = f"{finetune.gpus_per_node} GPU(s) x {format_bytes(finetune.gpu_memory_bytes)} (x {finetune.nodes} node(s))"
    big_enough = sum(1 for d in probe.devices if d.total_memory_bytes >= finetune.gpu_memory_bytes)
    found = f"{big_enough} of {probe.device_count} device(s) big enough on this node"
    try:
        require_gpus("sft_model (nemo)", finetune.gpus_per_node, finetune.gpu_memory_bytes, probe)
        items.append(PreflightItem("gpus", "pass", needed, found))
    except GpuGateError:
        items.append(PreflightItem("gpus", "fail", needed, found))
    fp8 = "pass" if probe.triton_fp8 else ("warn" if probe.cuda_available else "skip")  # no CUDA already fails above
    items.append(PreflightItem("triton fp8", fp8, "Triton FP8 kernel (else torch on the GPU, slower)", probe.triton_detail))
    return items


def _checkpoint_items(settings: Settings) -> list[PreflightItem]:
    """The base checkpoint, checked as the conversion will check it, and disk for the BF16 copy (and NeMo's)."""
    paths = settings.paths
    base = settings.base_checkpoint_dir
    items = []
    if base.is_dir():
        try:
            plan = plan_conversion(base)
        except CheckpointError as exc:
            items.append(PreflightItem("base checkpoint", "fail", f"a block-FP8 checkpoint at {base}", str(exc)))
            bf16_bytes = None
        else:
            bf16_bytes = plan.total_size
            items.append(PreflightItem("base checkpoint", "pass", f"a block-FP8 checkpoint at {base}", f"{len(plan.shards)} shard(s), BF16 size {format_bytes(bf16_bytes)}"))
    else:
        toy = settings.profile.model.kind == "toy"
        found = f"{base} not there" + (" (the base_checkpoint asset builds it)" if toy else "")
        items.append(PreflightItem("base checkpoint", "warn" if toy else "fail", f"a block-FP8 checkpoint at {base}", found))
        expected = settings.profile.compute.expected_checkpoint_bytes
        bf16_bytes = 2 * expected if expected else None  # FP8 weights double in BF16: an upper bound

    if bf16_bytes is None:
        items.append(PreflightItem("disk", "skip", "free space for the BF16 checkpoint", "size unknown"))
        return items
    copies = (0 if paths.bf16_checkpoint.is_dir() else 1) + (1 if settings.train_backend == "nemo" else 0)
    needed = copies * bf16_bytes
    where = _existing_parent(settings.data_dir)
    free = shutil.disk_usage(where).free
    what = f"{format_bytes(needed)} ({copies} x BF16 size: conversion" + (", NeMo import" if settings.train_backend == "nemo" else "") + ")"
    items.append(PreflightItem("disk", "pass" if free >= needed else "fail", what, f"{format_bytes(free)} free at {where}"))
    return items


def _existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def _nemo_item(python: Path, timeout_s: float) -> PreflightItem:
    needed = f"`{NEMO_IMPORT}` in {python}"
    if not python.is_file():
        return PreflightItem("nemo", "fail", needed, f"{python} not found (make .venv-nemo, or set SFTC_NEMO_PYTHON)")
    try:
        done = subprocess.run(
            [str(python), "-c", f"{NEMO_IMPORT}; import nemo; print(nemo.__version__)"],
            env={**os.environ, **entry_env()},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return PreflightItem("nemo", "fail", needed, f"import took longer than {timeout_s:.0f} s")
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return PreflightItem("nemo", "fail", needed, f"exit {done.returncode}: {last}")
    return PreflightItem("nemo", "pass", needed, f"NeMo {done.stdout.strip().splitlines()[-1]}")
