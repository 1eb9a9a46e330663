"""The Dagster resources of sftc, thin wrappers over the plain modules beside this file.

settings.py, paths.py, gpu.py and prices.py never import Dagster, so the stages' logic (and the `sftc`
command) use them without it; assets get the same objects through these resources.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import PrivateAttr

from sftc_resources.gpu import GpuGateError, GpuProbe, choose_device, probe_gpus, require_gpus
from sftc_resources.paths import ArtifactPaths
from sftc_resources.prices import PriceSource, PricesConfig, load_prices_config, price_source_from_settings
from sftc_resources.settings import Settings, load_settings


class ProjectResource(dg.ConfigurableResource):
    """Settings come from the environment and `.env`; `data_dir` overrides SFTC_DATA_DIR (tests)."""

    data_dir: str | None = None

    def settings(self) -> Settings:
        settings = load_settings()
        if self.data_dir:
            settings = settings.model_copy(update={"data_dir": Path(self.data_dir).absolute()})
        return settings

    def paths(self) -> ArtifactPaths:
        return ArtifactPaths(self.settings().data_dir)


class GpuResource(dg.ConfigurableResource):
    """The node's GPUs as assets see them (resource key "gpu"): probed once per run, refusals as dg.Failure."""

    check_triton: bool = True

    _probe: GpuProbe | None = PrivateAttr(default=None)

    def probe(self) -> GpuProbe:
        if self._probe is None:
            self._probe = probe_gpus(check_triton=self.check_triton)
        return self._probe

    def choose_device(self, asset: str, checkpoint_bytes: int, cpu_max_bytes: int) -> Literal["cuda", "cpu"]:
        try:
            return choose_device(asset, checkpoint_bytes, cpu_max_bytes, self.probe())
        except GpuGateError as exc:
            raise self._failure(exc) from None

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


class PriceDataResource(dg.ConfigurableResource):
    """The price source chosen by settings (profile.price_source, EODHD_API_KEY), as assets see it.

    `data_dir` overrides SFTC_DATA_DIR like ProjectResource's; `eodhd_base_url` overrides the configured URL.
    """

    data_dir: str | None = None
    eodhd_base_url: str | None = None

    def config(self) -> PricesConfig:
        config = load_prices_config()
        return config.model_copy(update={"eodhd_base_url": self.eodhd_base_url}) if self.eodhd_base_url else config

    def source(self) -> PriceSource:
        return price_source_from_settings(ProjectResource(data_dir=self.data_dir).settings(), self.config())
