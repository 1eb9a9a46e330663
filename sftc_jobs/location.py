"""How the code location is assembled: the stage modules, resources, the job, the schedule and the
automation sensors, for a given profile. `sftc_jobs.definitions` calls it once with the settings;
tests call it with stand-in modules and either profile.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import dagster as dg

from sftc_jobs.jobs import GPU_ONLY_ASSETS, cpu_validation
from sftc_jobs.schedules import nightly_cpu_validation_schedule
from sftc_jobs.sensors import automation_sensors
from sftc_resources.resources import GpuResource
from sftc_resources.resources import PriceDataResource
from sftc_resources.resources import ProjectResource
from sftc_resources.routing import Placement

STAGE_MODULES = (
    "sftc_assets.theses.assets",
    "sftc_assets.datasets.assets",
    "sftc_assets.checkpoints.assets",
    "sftc_assets.training.assets",
    "sftc_assets.training.nemo_assets",
    "sftc_assets.evaluation.assets",
    "sftc_assets.backtest.assets",
    "sftc_assets.reports.assets",
)


def load_stage_modules(names: tuple[str, ...] = STAGE_MODULES) -> list[ModuleType]:
    """Every stage's assets module: one that is missing or broken stops the code location from loading."""
    return [importlib.import_module(name) for name in names]


def step_executor(placement: Placement) -> dg.ExecutorDefinition | None:
    """One Kubernetes pod per step (its op tags place it) when asked; else Dagster's default executor."""
    if placement != "step":
        return None
    from dagster_k8s import k8s_job_executor  # needs the kubernetes client: only imported where it is used

    return k8s_job_executor


def build_definitions(modules: list[ModuleType], profile_name: str, train_backend: str, placement: Placement = "run") -> dg.Definitions:
    assets = dg.load_assets_from_modules(modules)
    toy = profile_name == "toy"
    # The NeMo import is automated only where the NeMo backend will read it.
    not_automated = () if train_backend == "nemo" else GPU_ONLY_ASSETS
    return dg.Definitions(
        assets=assets,
        asset_checks=dg.load_asset_checks_from_modules(modules),
        resources={
            "project": ProjectResource(),
            "gpu": GpuResource(),
            "prices": PriceDataResource(),
            "pipes_subprocess_client": dg.PipesSubprocessClient(),
        },
        jobs=[cpu_validation],
        schedules=[nightly_cpu_validation_schedule(running=toy)],
        # The toy profile has no GPU node: its GPU sensor (the NeMo import) starts stopped.
        sensors=automation_sensors(assets, running=("cpu",) if toy else ("cpu", "gpu"), excluded=not_automated, placement=placement),
        executor=step_executor(placement),
    )
