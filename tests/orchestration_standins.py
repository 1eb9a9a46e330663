"""Stand-in assets with the real chain's keys, partitions, dependencies and compute classes, for the
orchestration tests: each writes one small file per partition (holding its run id) under the data dir,
so tests see exactly which partitions a run replaced, in milliseconds instead of the toy chain's minutes.
The real `validation_report` asset and check are used as they are.
"""


import types

import dagster as dg

import sftc_assets.reports.assets as report_assets
from sftc_jobs.location import build_definitions
from sftc_jobs.partitions import month_range_partitions
from sftc_resources.resources import ProjectResource
from sftc_jobs.sensors import asset_node_class
from sftc_resources.routing import asset_placement

THESIS_MONTHS = ("2012-01", "2012-12")
TEST_MONTHS = ("2012-09", "2012-12")

# key: (compute class, partitioned by: None | "theses" | "test", deps)
CHAIN = {
    "raw_xml": ("cpu", "theses", []),
    "thesis_jsonl": ("cpu", "theses", ["raw_xml"]),
    "hf_splits": ("cpu", None, ["thesis_jsonl"]),
    "nemo_jsonl": ("cpu", None, ["hf_splits"]),
    "base_checkpoint": ("cpu", None, ["nemo_jsonl"]),
    "bf16_checkpoint": ("auto", None, ["base_checkpoint"]),
    "nemo_model": ("gpu", None, ["bf16_checkpoint"]),
    "sft_model": ("auto", None, ["bf16_checkpoint", "nemo_jsonl"]),
    "eval_csv": ("auto", "test", ["hf_splits", "sft_model"]),
    "backtest_report": ("cpu", None, ["eval_csv"]),
}
# Every asset of the design: the chain and the report on it.
DESIGN_ASSETS = frozenset(CHAIN) | {"validation_report"}


def standin_file(data_dir, asset: str, partition: str | None):
    return data_dir / asset / f"{partition or 'all'}.txt"


def _standin_asset(name: str, compute_class: str, partitions_def, deps: list[str], profile_name: str, failing: set[str], version: str):
    def materialize(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        if name in failing:
            raise RuntimeError(f"{name} stand-in told to fail")
        data_dir = project.paths().root
        partitions = context.partition_keys if partitions_def is not None else [None]
        for partition in partitions:
            path = standin_file(data_dir, name, partition)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(context.run_id)
        return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(data_dir / name)), "rows": len(partitions)})

    materialize.__name__ = name
    return dg.asset(
        name=name,
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run() if partitions_def is not None else None,
        deps=deps,
        code_version=version,
        **asset_placement(compute_class, profile_name),
    )(materialize)


def standin_module(profile_name: str = "toy", failing: tuple[str, ...] = (), code_versions: dict | None = None) -> types.ModuleType:
    """A module of stand-in chain assets (placed for `profile_name`; code version "1" unless `code_versions`
    says otherwise), a passing check, and the real report."""
    partitions = {"theses": month_range_partitions(*THESIS_MONTHS), "test": month_range_partitions(*TEST_MONTHS), None: None}
    module = types.ModuleType(f"standins_{profile_name}")
    for name, (compute_class, partitioned_by, deps) in CHAIN.items():
        version = (code_versions or {}).get(name, "1")
        setattr(module, name, _standin_asset(name, compute_class, partitions[partitioned_by], deps, profile_name, set(failing), version))

    @dg.asset_check(asset="thesis_jsonl", description="stand-in: the month's file exists")
    def accepted_plus_rejected_equals_read(project: ProjectResource) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=(project.paths().root / "thesis_jsonl").is_dir())

    module.accepted_plus_rejected_equals_read = accepted_plus_rejected_equals_read
    module.validation_report = report_assets.validation_report
    module.ready_for_gpu_deployment = report_assets.ready_for_gpu_deployment
    return module


def standin_definitions(
    profile_name: str = "toy",
    train_backend: str = "hf",
    failing: tuple[str, ...] = (),
    code_versions: dict | None = None,
    placement: str = "run",
) -> dg.Definitions:
    """The real `build_definitions` (resources, job, schedule, sensors, executor) over the stand-in chain."""
    return build_definitions([standin_module(profile_name, failing, code_versions)], profile_name, train_backend, placement)


def location_facts(defs: dg.Definitions) -> dict:
    """Node class and automation sensors of every materializable asset of a code location."""
    graph = defs.resolve_asset_graph()
    return {
        a.key.to_user_string(): {"node": asset_node_class(a), "sensors": [s.name for s in defs.sensors if a.key in s.asset_selection.resolve(graph)]}
        for a in defs.assets
        if isinstance(a, dg.AssetsDefinition) and a.is_materializable
    }
