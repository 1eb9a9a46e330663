"""What the node's GPUs can do, and the gate that stops an asset at once, before any work, when it cannot.

Plain functions (`probe_gpus`, `choose_device`, `require_gpus`) serve the command line, preflight and tests; the
`GpuResource` (resource key "gpu", sftc_platform/resources.py) wraps them for assets and turns a refusal into
`dg.Failure`. Whether Triton's FP8 kernel works is asked of the checkpoints stage's kernel through `fp8_check`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

from sftc_core.text import format_bytes


def check_device(device: str) -> str:
    """A `--device` value as the commands take it: auto (CUDA when present), cpu, cuda or cuda:N."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    return device


# Runs the FP8 kernel on a CUDA device and says whether it matched the torch math, and why not.
Fp8Check = Callable[[int], tuple[bool, str]]


class GpuGateError(RuntimeError):
    """The node lacks what an asset needs; the message says what is needed and what the node has."""


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    total_memory_bytes: int
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class GpuProbe:
    cuda_available: bool
    devices: tuple[GpuDevice, ...]
    torch_version: str
    cuda_version: str | None  # the CUDA torch was built with; None for a CPU build
    triton_version: str | None
    triton_fp8: bool  # the Triton FP8 kernel ran and matched the torch math on device 0
    triton_detail: str

    @property
    def device_count(self) -> int:
        return len(self.devices)

    def describe(self) -> str:
        if not self.devices:
            build = f"CUDA {self.cuda_version} build" if self.cuda_version else "CPU-only build"
            return f"no CUDA device (torch {self.torch_version}, {build})"
        names = ", ".join(
            f"{d.name} ({format_bytes(d.total_memory_bytes)}, sm_{d.compute_capability[0]}{d.compute_capability[1]})"
            for d in self.devices
        )
        return (
            f"{self.device_count} CUDA device(s): {names}; torch {self.torch_version}, CUDA {self.cuda_version}; "
            f"{self.triton_detail}"
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "device_count": self.device_count}


def probe_gpus(fp8_check: Fp8Check | None = None) -> GpuProbe:
    """CUDA, devices (name, memory, compute capability) and, with `fp8_check`, whether Triton's FP8 kernel works
    here (run on device 0, not assumed)."""
    import torch

    available = torch.cuda.is_available()
    devices = tuple(
        GpuDevice(
            index=i,
            name=torch.cuda.get_device_name(i),
            total_memory_bytes=torch.cuda.get_device_properties(i).total_memory,
            compute_capability=tuple(torch.cuda.get_device_capability(i)),
        )
        for i in range(torch.cuda.device_count() if available else 0)
    )
    triton_version, triton_fp8, detail = None, False, "no CUDA device: Triton not probed"
    if devices:
        try:
            import triton

            triton_version = triton.__version__
        except ImportError:
            detail = "triton not installed (pip install -e '.[gpu]'): conversion uses torch on the GPU"
        else:
            if fp8_check is not None:
                triton_fp8, detail = fp8_check(0)
            else:
                detail = f"Triton {triton_version} installed, FP8 kernel not probed"
    return GpuProbe(
        available and bool(devices), devices, torch.__version__, torch.version.cuda, triton_version, triton_fp8, detail
    )


def choose_device(
    asset: str, checkpoint_bytes: int, cpu_max_bytes: int, probe: GpuProbe | None = None
) -> Literal["cuda", "cpu"]:
    """CUDA when the node has it; otherwise the CPU, but only for checkpoints up to `cpu_max_bytes`."""
    probe = probe or probe_gpus()
    if probe.device_count:
        return "cuda"
    if checkpoint_bytes <= cpu_max_bytes:
        return "cpu"
    raise GpuGateError(
        f"{asset} needs a CUDA GPU: its checkpoint is {format_bytes(checkpoint_bytes)}, above the CPU limit of "
        f"{format_bytes(cpu_max_bytes)} (profile compute.cpu_max_checkpoint_bytes); this node has {probe.describe()}. "
        "Run it on a GPU node (the gpu pool / sftc/node=gpu tag)."
    )


def require_gpus(asset: str, count: int, min_memory_bytes: int, probe: GpuProbe | None = None) -> GpuProbe:
    """At least `count` CUDA devices with `min_memory_bytes` each, or GpuGateError naming the shortfall."""
    probe = probe or probe_gpus()
    big_enough = [d for d in probe.devices if d.total_memory_bytes >= min_memory_bytes]
    if len(big_enough) < count:
        raise GpuGateError(
            f"{asset} needs {count} CUDA GPU(s) with at least {format_bytes(min_memory_bytes)} each; this node has "
            f"{len(big_enough)} such device(s): {probe.describe()}"
        )
    return probe
