"""Launch settings for the launcher tests: the toy settings with another launcher, the full profile's NeMo layout."""

from __future__ import annotations

from sftc_core.configs import SlurmConfig
from sftc_core.settings import load_settings
from sftc_resources.launchers.plan import Launch


def launch_of(launcher: str, env: dict | None = None, **cluster_slurm) -> Launch:
    settings = load_settings(env=env or {})
    if cluster_slurm:
        slurm = SlurmConfig.model_validate({**settings.cluster.slurm.model_dump(), **cluster_slurm})
        settings = settings.model_copy(update={"cluster": settings.cluster.model_copy(update={"slurm": slurm})})
    return Launch.from_settings(settings, launcher)
