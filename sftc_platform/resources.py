"""The Dagster resources of sftc: the node's GPUs, as assets see them.

Settings are not a resource: each stage's `defs(settings)` closes over the one Settings object read at the
edge, so an asset's placement and its body always agree.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal

import dagster as dg
from pydantic import PrivateAttr

from sftc_core.gpu import (
    GpuGateError,
    GpuProbe,
    choose_device,
    probe_gpus,
    require_gpus,
)


class GpuResource(dg.ConfigurableResource):
    """The node's GPUs (resource key "gpu"): probed once per run, refusals as dg.Failure before any work."""

    check_triton: bool = True
    # The FP8 kernel's self-test the probe runs on a CUDA node: stage code, so the definitions hand it in (their
    # subclass in sftc_jobs/location.py); without one the probe reports Triton as not asked.
    fp8_check: ClassVar[Callable[[], bool] | None] = None

    _probe: GpuProbe | None = PrivateAttr(default=None)

    def probe(self) -> GpuProbe:
        if self._probe is None:
            self._probe = probe_gpus(fp8_check=self.fp8_check if self.check_triton else None)
        return self._probe

    def choose_device(self, asset: str, checkpoint_bytes: int, cpu_max_bytes: int) -> Literal["cuda", "cpu"]:
        try:
            return choose_device(asset, checkpoint_bytes, cpu_max_bytes, self.probe())
        except GpuGateError as exc:
            raise self._failure(exc) from None

    def device_for_checkpoint(
        self, asset: str, checkpoint: Path, cpu_max_bytes: int, made_by: str
    ) -> Literal["cuda", "cpu"]:
        """The device for work on the checkpoint at `checkpoint` (sized from its *.safetensors), or dg.Failure."""
        checkpoint_bytes = sum(p.stat().st_size for p in Path(checkpoint).glob("*.safetensors"))
        if not checkpoint_bytes:
            raise dg.Failure(
                f"{checkpoint}: no *.safetensors checkpoint; materialize {made_by} first", allow_retries=False
            )
        return self.choose_device(asset, checkpoint_bytes, cpu_max_bytes)

    def require_gpus(self, asset: str, count: int, min_memory_bytes: int) -> GpuProbe:
        try:
            return require_gpus(asset, count, min_memory_bytes, self.probe())
        except GpuGateError as exc:
            raise self._failure(exc) from None

    def _failure(self, exc: GpuGateError) -> dg.Failure:
        probe = self.probe()
        return dg.Failure(
            description=str(exc),
            metadata={"gpu_probe": dg.MetadataValue.json(probe.as_dict()), "node": probe.describe()},
            allow_retries=False,
        )
