"""Launch settings for the launcher tests: the toy settings with another launcher, the full profile's NeMo layout."""

from __future__ import annotations

from dataclasses import replace

from sftc_core.configs import KubernetesConfig, SlurmConfig
from sftc_core.settings import load_settings
from sftc_platform.launchers.plan import Launch


def launch_of(
    launcher: str,
    env: dict | None = None,
    kubernetes: dict | None = None,
    max_pending: str | None = None,
    **cluster_slurm,
) -> Launch:
    """The toy settings' launch by `launcher`, with fields of configs/cluster.yaml's slurm: (`cluster_slurm`) and
    kubernetes: sections replaced, and launch.max_pending."""
    settings = load_settings(env=env or {})
    cluster = settings.cluster
    for name, model, fields in (("slurm", SlurmConfig, cluster_slurm), ("kubernetes", KubernetesConfig, kubernetes)):
        if fields:
            section = model.model_validate({**getattr(cluster, name).model_dump(), **fields})
            cluster = cluster.model_copy(update={name: section})
    launch = Launch.from_settings(settings.model_copy(update={"cluster": cluster}), launcher)
    return replace(launch, max_pending=max_pending) if max_pending else launch
