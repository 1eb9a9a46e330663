"""Stand-in assets with the real chain's keys, partitions, dependencies and compute classes, for the
orchestration tests: each writes its real artifact paths (per partition) holding only its run id, with the
marker the real writers leave, so tests see exactly which partitions a run replaced, in milliseconds
instead of the toy chain's minutes. The real `validation_report` stage (asset and check) is used as it is.
"""

import os
import time

import dagster as dg

from sftc_assets.reports import assets as report_assets
from sftc_core.io import atomic_dir, atomic_write_text
from sftc_core.months import months_between
from sftc_core.settings import Settings, load_settings
from sftc_jobs.chain import Chain
from sftc_jobs.location import build_definitions
from sftc_jobs.sensors import asset_node_class
from sftc_platform.metadata import config_hash, partition_metadata
from sftc_platform.partitions import month_partitions
from sftc_platform.routing import asset_placement
from sftc_platform.writes import writing

THESIS_MONTHS = ("2012-01", "2012-12")
TEST_MONTHS = ("2012-09", "2012-12")

# key: (compute class, partitioned by: None | "theses" | "test", deps)
CHAIN = {
    "raw_xml": ("cpu", "theses", []),
    "thesis_jsonl": ("cpu", "theses", ["raw_xml"]),
    "hf_splits": ("cpu", None, ["thesis_jsonl"]),
    "base_checkpoint": ("cpu", None, ["hf_splits"]),
    "nemo_jsonl": ("cpu", None, ["hf_splits", "base_checkpoint"]),
    "bf16_checkpoint": ("auto", None, ["base_checkpoint"]),
    "nemo_model": ("gpu", None, ["bf16_checkpoint"]),
    "sft_model": ("auto", None, ["bf16_checkpoint", "nemo_jsonl"]),
    "eval_csv": ("auto", "test", ["hf_splits", "sft_model"]),
    "backtest_report": ("cpu", None, ["eval_csv"]),
}
# Every asset of the design: the chain and the report on it.
DESIGN_ASSETS = frozenset(CHAIN) | {"validation_report"}


def _is_file(target) -> bool:
    return bool(target.suffix) and target.suffix != ".partial"


def standin_file(data_dir, asset: str, partition: str | None):
    """The file holding the run id of the stand-in's last write: its first artifact, or a file inside it."""
    target = load_settings(env={**os.environ, "SFTC_DATA_DIR": str(data_dir)}).artifacts_of(asset, partition)[0]
    return target if _is_file(target) else target / "run.txt"


def _standin_asset(
    name: str, compute_class: str, partitions_def, deps: list[str], settings: Settings, failing: set[str], version: str
):
    def materialize(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        if name in failing:
            raise RuntimeError(f"{name} stand-in told to fail")
        time.sleep(float(os.environ.get("SFTC_STANDIN_DELAY_S") or 0))  # lets tests run two chains at once
        partitions = context.partition_keys if partitions_def is not None else [None]
        targets = [t for partition in partitions for t in settings.artifacts_of(name, partition)]
        with writing(settings, name, targets) as stamp:
            for target in targets:
                if _is_file(target):
                    atomic_write_text(target, context.run_id, stamp)
                else:
                    with atomic_dir(target, stamp) as staging:
                        (staging / "run.txt").write_text(context.run_id)
        if partitions_def is None:
            return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(targets[0])), "rows": 1})
        for partition in partitions:  # as the real assets do: each partition's own figures on its materialization
            partition_metadata(
                context,
                partition,
                {"path": dg.MetadataValue.path(str(settings.artifacts_of(name, partition)[0])), "rows": 1},
            )
        return dg.MaterializeResult()

    materialize.__name__ = name
    return dg.asset(
        name=name,
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run() if partitions_def is not None else None,
        deps=deps,
        code_version=f"{version}-{config_hash(settings, name)}",  # the real assets' rule: code and the settings read
        **asset_placement(compute_class, settings),
    )(materialize)


def standin_stage(failing: tuple[str, ...] = (), code_versions: dict | None = None):
    """A stage `defs(settings)` of stand-in chain assets (code "1" unless `code_versions` says otherwise, with
    the hash of the settings each real asset reads) and a passing check."""

    def defs(settings: Settings) -> dg.Definitions:
        partitions = {
            "theses": month_partitions(months_between(*THESIS_MONTHS)),
            "test": month_partitions(months_between(*TEST_MONTHS)),
            None: None,
        }
        assets = [
            _standin_asset(
                name,
                compute_class,
                partitions[partitioned_by],
                deps,
                settings,
                set(failing),
                (code_versions or {}).get(name, "1"),
            )
            for name, (compute_class, partitioned_by, deps) in CHAIN.items()
        ]

        @dg.asset_check(asset="thesis_jsonl", description="stand-in: the month's file exists")
        def accepted_plus_rejected_equals_read() -> dg.AssetCheckResult:
            return dg.AssetCheckResult(passed=settings.paths.jsonl.is_dir())

        return dg.Definitions(assets=assets, asset_checks=[accepted_plus_rejected_equals_read])

    return defs


def standin_settings(profile_name: str = "toy", train_backend: str = "hf", placement: str = "run") -> Settings:
    """The settings of the environment (the data_dir fixture's SFTC_DATA_DIR),
    with the profile, backend and placement given."""
    return load_settings(
        env={
            **os.environ,
            "SFTC_PROFILE": profile_name,
            "TRAIN_BACKEND": train_backend,
            "SFTC_K8S_PLACEMENT": placement,
        }
    )


def standin_stages(failing: tuple[str, ...] = (), code_versions: dict | None = None) -> list:
    return [standin_stage(failing, code_versions), report_assets.defs]


def standin_definitions(
    profile_name: str = "toy",
    train_backend: str = "hf",
    failing: tuple[str, ...] = (),
    code_versions: dict | None = None,
    placement: str = "run",
) -> dg.Definitions:
    """The real `build_definitions` (resources, job, schedule, sensors, executor) over the stand-in chain."""
    return build_definitions(
        standin_settings(profile_name, train_backend, placement), standin_stages(failing, code_versions)
    )


def location_facts(defs: dg.Definitions) -> dict:
    """Node class and automation sensors of every materializable asset of a code location."""
    facts = {}
    for definition in defs.assets:
        if not isinstance(definition, dg.AssetsDefinition) or isinstance(definition, dg.AssetChecksDefinition):
            continue
        for key in definition.keys:
            sensors = [s.name for s in defs.sensors if key in s.asset_selection.resolve(defs.resolve_asset_graph())]
            facts[key.to_user_string()] = {"node": asset_node_class(definition, key), "sensors": sensors}
    return facts


def standin_chain(
    profile_name: str = "toy",
    train_backend: str = "hf",
    failing: tuple[str, ...] = (),
    code_versions: dict | None = None,
) -> Chain:
    """What `sftc run` drives: the stand-in code location as a Chain."""
    settings = standin_settings(profile_name, train_backend)
    return Chain.of(build_definitions(settings, standin_stages(failing, code_versions)), settings)
