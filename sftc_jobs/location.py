"""How the code location is assembled from one Settings object: every stage's definitions, the resources, the
validation job, the schedule and the automation sensors. `sftc_jobs.definitions` calls it once with the
settings read there; `sftc run` and the tests call it with theirs (tests also with stand-in stages).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import dagster as dg

from sftc_assets.backtest import assets as backtest_assets
from sftc_assets.checkpoints import assets as checkpoint_assets
from sftc_assets.checkpoints.convert import triton_fp8_check
from sftc_assets.evaluation import assets as evaluation_assets
from sftc_assets.reports import assets as report_assets
from sftc_assets.sft_data import assets as sft_data_assets
from sftc_assets.theses import assets as thesis_assets
from sftc_assets.training import assets as training_assets
from sftc_core.configs import ProfileConfig
from sftc_core.settings import Placement, Settings
from sftc_jobs.chain import Chain
from sftc_jobs.jobs import GPU_ONLY_ASSETS, cpu_validation_job
from sftc_jobs.schedules import nightly_cpu_validation_schedule
from sftc_jobs.sensors import automated, automation_sensors
from sftc_platform.resources import GpuResource
from sftc_platform.routing import NODE_TAG, node_sentence

StageDefs = Callable[[Settings], dg.Definitions]
# The pipeline's stages in order, each `defs(settings)`.
STAGES: tuple[StageDefs, ...] = (
    thesis_assets.defs,
    sft_data_assets.defs,
    checkpoint_assets.defs,
    training_assets.defs,
    evaluation_assets.defs,
    backtest_assets.defs,
    report_assets.defs,
)


class NodeGpus(GpuResource):
    """The code location's GPU resource: its probe runs the FP8 conversion's Triton kernel on a CUDA node."""

    fp8_check = staticmethod(triton_fp8_check)


RESOURCES = {"gpu": NodeGpus(), "pipes_subprocess_client": dg.PipesSubprocessClient()}


def step_executor(placement: Placement) -> dg.ExecutorDefinition | None:
    """One Kubernetes pod per step (its op tags place it) when asked; else Dagster's default executor."""
    if placement != "step":
        return None
    from dagster_k8s import (
        k8s_job_executor,  # needs the kubernetes client: only imported where it is used
    )

    return k8s_job_executor


def shown_with_its_node(assets_def: dg.AssetsDefinition, profile: ProfileConfig) -> dg.AssetsDefinition:
    """The node class where people look first: a `cpu`/`gpu` kind on the graph and in the catalog, and where the
    asset runs, in words, at the end of its description (from the compute class `asset_placement` recorded)."""

    def show(spec: dg.AssetSpec) -> dg.AssetSpec:
        node, compute_class = spec.tags.get(NODE_TAG), spec.metadata.get("compute_class")
        if node is None or compute_class is None:
            return spec
        description = f"{spec.description or ''}\n\n{node_sentence(compute_class, profile)}".strip()
        return spec.merge_attributes(kinds={node}).replace_attributes(description=description)

    return dg.map_asset_specs(show, [assets_def])[0]


def build_definitions(settings: Settings, stages: Sequence[StageDefs] | None = None) -> dg.Definitions:
    """The code location for `settings`: the given stages (default: STAGES, read at call time)."""
    stage_defs = dg.Definitions.merge(*(stage(settings) for stage in (stages or STAGES)))
    # The NeMo import is automated only where the NeMo backend will read it.
    not_automated = () if settings.train_backend == "nemo" else GPU_ONLY_ASSETS
    assets = [
        definition
        if not isinstance(definition, dg.AssetsDefinition)
        else shown_with_its_node(
            definition if set(definition.keys) & set(not_automated) else automated(definition), settings.profile
        )
        for definition in stage_defs.assets
    ]
    checks = list(stage_defs.asset_checks or ())
    job = cpu_validation_job(Chain((*assets, *checks), RESOURCES, settings))
    toy = settings.profile_name == "toy"
    # The toy profile has no GPU node: its GPU sensor (the NeMo import) starts stopped. SFTC_AUTOMATION=off: all of
    # them, and the nightly schedule, so opening the web UI runs nothing until a person starts it.
    running = () if not settings.automation else ("cpu",) if toy else ("cpu", "gpu")
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        resources=RESOURCES,
        jobs=[job],
        schedules=[nightly_cpu_validation_schedule(job, settings, running=toy and settings.automation)],
        sensors=automation_sensors(assets, settings, running=running, excluded=not_automated),
        executor=step_executor(settings.k8s_placement),
    )
