"""Materialize a chain of assets through a Dagster instance, in order, redoing only what needs it.

Dagster 1.13 refuses a run whose assets have different partitions definitions (the monthly theses, the
test-window months of `eval_csv`, and the unpartitioned assets between them), so one run cannot carry the
whole chain. This module cuts the chain into segments of one partitions definition each, in dependency
order, and runs each segment with `dg.materialize` into the instance: the partitions of a segment go in
one run per contiguous range (a single-run backfill, which the partitioned assets declare; the range tags
are the ones Dagster's own backfills set, as its maintainers show for launching ranges from code). A run is
what `dg.materialize` builds (an asset job over the selection, executed in process), with sftc's logger in
place of Dagster's console logger (sftc_jobs/chain_log.py): one line per asset as it starts and ends.
Before each segment it asks the instance and the files what is needed: missing, materialized by other code
or other settings (the `dagster/code_version` tag of the latest materialization: code and settings hash),
older than one of its inputs, or with files missing or changed since sftc wrote them (their markers); so a
second pass redoes nothing, and nothing stale passes for fresh. Public Dagster API only: asset specs,
`dg.Definitions` / `define_asset_job` / `execute_in_process`, `fetch_materializations`.
`sftc run`, `sftc rerun` and the `cpu_validation` job all go through `materialize_chain`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dagster as dg

from sftc_core import locks
from sftc_core.artifacts import integrity_problems
from sftc_core.settings import Settings
from sftc_jobs.chain_log import RunReport, chain_logger
from sftc_platform.routing import ASSETS_TAG, DATA_DIR_TAG, NODE_TAG
from sftc_platform.run_history import fail_interrupted_runs

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
CODE_VERSION_TAG = "dagster/code_version"
ALL_PARTITIONS = "*"
# The job name `dg.materialize` gives its runs: the web UI shows them as asset materializations.
CHAIN_JOB = "__ephemeral_asset_job__"
CHAIN_LOGGER = "sftc_chain"

# Partition keys an asset needs in a run: {None} for an unpartitioned asset that needs it, empty for none.
Needed = dict[dg.AssetKey, set[str | None]]


@dataclass(frozen=True)
class ChainAsset:
    """What the chain knows of one materializable asset, from its spec."""

    key: dg.AssetKey
    deps: frozenset[dg.AssetKey]
    partitions_def: dg.PartitionsDefinition | None
    code_version: str | None
    node: str

    def partition_keys(self) -> list[str | None]:
        return [None] if self.partitions_def is None else list(self.partitions_def.get_partition_keys())


@dataclass(frozen=True)
class Chain:
    """What `dg.materialize` needs to run any part of a code location (assets with their checks, resources),
    and the settings it was built from."""

    definitions: tuple
    resources: Mapping[str, object]
    settings: Settings

    @classmethod
    def of(cls, defs: dg.Definitions, settings: Settings) -> Chain:
        return cls((*defs.assets, *(defs.asset_checks or ())), dict(defs.resources or {}), settings)

    @property
    def assets(self) -> dict[dg.AssetKey, ChainAsset]:
        """Every materializable asset (observed source assets and checks are not materialized by the chain)."""
        found = {}
        for definition in self.definitions:
            if not isinstance(definition, dg.AssetsDefinition) or isinstance(definition, dg.AssetChecksDefinition):
                continue
            for key in definition.keys:
                spec = definition.get_asset_spec(key)
                found[key] = ChainAsset(
                    key,
                    frozenset(d.asset_key for d in spec.deps),
                    spec.partitions_def,
                    spec.code_version,
                    spec.tags.get(NODE_TAG, "cpu"),
                )
        return found


@dataclass(frozen=True)
class Segment:
    """Assets sharing one partitions definition, runnable together once earlier segments are done."""

    keys: tuple[dg.AssetKey, ...]
    partitions_def: dg.PartitionsDefinition | None


@dataclass
class ChainRun:
    run_id: str
    keys: tuple[dg.AssetKey, ...]
    partition_range: tuple[str, str] | None
    success: bool
    # The failed step's block for people: the asset, its partitions, the cause in the project's words.
    failure: str | None = None
    # What the run materialized before it ended (all of `keys` when it succeeded), and the asset that failed.
    materialized: frozenset[dg.AssetKey] = frozenset()
    failed_asset: str | None = None


@dataclass
class ChainResult:
    runs: list[ChainRun] = field(default_factory=list)
    # Assets skipped because nothing about them was missing or stale.
    up_to_date: list[dg.AssetKey] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(run.success for run in self.runs)

    @property
    def failed_run(self) -> ChainRun | None:
        return next((run for run in self.runs if not run.success), None)


def toposorted_keys(assets: Mapping[dg.AssetKey, ChainAsset], keys: Iterable[dg.AssetKey]) -> list[dg.AssetKey]:
    """`keys` in dependency order; within a level by name, so the order is the same on every run."""
    wanted, placed, order = set(keys), set(), []
    while len(order) < len(wanted):
        level = sorted(
            (k for k in wanted - placed if assets[k].deps & wanted <= placed), key=lambda k: k.to_user_string()
        )
        if not level:
            raise ValueError(
                f"the assets {sorted(k.to_user_string() for k in wanted - placed)} depend on each other in a cycle"
            )
        order += level
        placed |= set(level)
    return order


def plan_segments(assets: Mapping[dg.AssetKey, ChainAsset], keys: Iterable[dg.AssetKey]) -> list[Segment]:
    """Cut `keys` into segments of one partitions definition each; every segment's inputs come from earlier ones."""
    order = toposorted_keys(assets, keys)
    in_chain = set(order)
    done: set[dg.AssetKey] = set()
    segments = []

    def ready(key: dg.AssetKey, available: set[dg.AssetKey]) -> bool:
        return (assets[key].deps & in_chain) <= available

    while len(done) < len(order):
        first = next(key for key in order if key not in done and ready(key, done))
        partitions_def = assets[first].partitions_def
        members = [first]
        grown = True
        while grown:  # take in every later asset of the same partitions definition whose inputs are available
            grown = False
            for key in order:
                if key in done or key in members or assets[key].partitions_def != partitions_def:
                    continue
                if ready(key, done | set(members)):
                    members.append(key)
                    grown = True
        members.sort(key=order.index)
        segments.append(Segment(tuple(members), partitions_def))
        done.update(members)
    return segments


def latest_materialization(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None = None
) -> dg.EventLogRecord | None:
    """The latest materialization of one partition of `key` (of any partition when None)."""
    records_filter = dg.AssetRecordsFilter(
        asset_key=key, asset_partitions=[partition] if partition is not None else None
    )
    records = instance.fetch_materializations(records_filter, limit=1).records
    return records[0] if records else None


def needed_in_segment(
    segment: Segment,
    assets: Mapping[dg.AssetKey, ChainAsset],
    instance: dg.DagsterInstance,
    forced: Mapping[dg.AssetKey, Iterable[str | None] | str],
    settings: Settings,
) -> Needed:
    """What each asset of the segment must (re)materialize: forced; missing; materialized by other code or
    settings than today's (its code version); older than an input (a partition of the same partitions
    definition, else the newest materialization of the input); or with files that are not what sftc wrote.
    Whatever an upstream asset of the same segment redoes is redone downstream too (it will be newer once
    that runs)."""
    newest: dict[tuple[dg.AssetKey, str | None], dg.EventLogRecord | None] = {}

    def latest(key: dg.AssetKey, partition: str | None) -> dg.EventLogRecord | None:
        if (key, partition) not in newest:
            newest[key, partition] = latest_materialization(instance, key, partition)
        return newest[key, partition]

    def stale(asset: ChainAsset, partition: str | None) -> bool:
        mine = latest(asset.key, partition)
        if mine is None or mine.asset_materialization.tags.get(CODE_VERSION_TAG) != asset.code_version:
            return True
        if any(integrity_problems(target) for target in settings.artifacts_of(asset.key.to_user_string(), partition)):
            return True
        for parent in asset.deps:
            same_partitions = (
                parent in assets and assets[parent].partitions_def == segment.partitions_def and partition is not None
            )
            theirs = latest(parent, partition if same_partitions else None)
            if theirs is not None and theirs.storage_id > mine.storage_id:
                return True
        return False

    needed: Needed = {}
    for key in segment.keys:
        asset = assets[key]
        partitions = asset.partition_keys()
        force = forced.get(key, ())
        wanted = set(partitions) if force == ALL_PARTITIONS else set(force) & set(partitions)
        wanted |= {p for p in partitions if p not in wanted and stale(asset, p)}
        for parent in asset.deps & set(needed):
            # Same partitions definition: partition P of the child reads partition P of the parent.
            wanted |= needed[parent] if segment.partitions_def is not None else ({None} if needed[parent] else set())
        needed[key] = wanted
    return needed


def contiguous_ranges(keys: Iterable[str], partitions_def: dg.PartitionsDefinition) -> list[tuple[str, str]]:
    """Runs of consecutive partition keys, as (first, last) pairs in the definition's order."""
    order = {key: i for i, key in enumerate(partitions_def.get_partition_keys())}
    ranges: list[list[str]] = []
    for key in sorted(keys, key=order.__getitem__):
        if ranges and order[key] == order[ranges[-1][-1]] + 1:
            ranges[-1].append(key)
        else:
            ranges.append([key])
    return [(run[0], run[-1]) for run in ranges]


def _runs_for_segment(segment: Segment, needed: Needed) -> list[tuple[tuple[dg.AssetKey, ...], tuple[str, str] | None]]:
    """(asset keys, partition range) per run: assets needing the same partitions share runs, upstream first."""
    groups: dict[frozenset, list[dg.AssetKey]] = {}
    for key in segment.keys:
        if needed[key]:
            groups.setdefault(frozenset(needed[key]), []).append(key)
    runs = []
    for partitions, keys in groups.items():
        if segment.partitions_def is None:
            runs.append((tuple(keys), None))
        else:
            runs.extend((tuple(keys), span) for span in contiguous_ranges(partitions, segment.partitions_def))
    return runs


def materialize_chain(
    chain: Chain,
    instance: dg.DagsterInstance,
    keys: Sequence[dg.AssetKey],
    *,
    forced: Mapping[dg.AssetKey, Iterable[str | None] | str] | None = None,
    tags: Mapping[str, str] | None = None,
    log: logging.Logger | None = None,
) -> ChainResult:
    """Materialize `keys` in dependency order through `instance`; stops at the first failed run.

    `forced` names partitions to redo even when fresh (`ALL_PARTITIONS` for all of an asset's).
    """
    log = log or logging.getLogger(__name__)
    data_dir = chain.settings.data_dir
    # One chain run per data directory at a time: a second waits, so no run reads another's half-written files.
    with locks.exclusive(data_dir, f"the data directory {data_dir}"):
        interrupted = fail_interrupted_runs(instance, str(data_dir))
        if interrupted:
            log.warning(
                "marked %d interrupted run(s) of %s failed: %s", len(interrupted), data_dir, ", ".join(interrupted)
            )
        return _materialize_segments(chain, instance, keys, forced or {}, tags or {}, log)


def _execute(
    chain: Chain, instance: dg.DagsterInstance, keys, partition_key: str | None, tags: dict, report: RunReport
) -> dg.ExecuteInProcessResult:
    """What `dg.materialize(selection=keys)` does, with the chain's logger as the run's only logger (a job's loggers
    are active when its run config names them)."""
    defs = dg.Definitions(
        assets=chain.definitions,
        resources=chain.resources,
        jobs=[dg.define_asset_job(CHAIN_JOB, selection=list(keys))],
        loggers={CHAIN_LOGGER: chain_logger(report)},
    )
    return defs.resolve_job_def(CHAIN_JOB).execute_in_process(
        run_config={"loggers": {CHAIN_LOGGER: {}}},
        instance=instance,
        partition_key=partition_key,
        tags=tags,
        raise_on_error=False,
    )


def _materialize_segments(chain: Chain, instance: dg.DagsterInstance, keys, forced, tags, log) -> ChainResult:
    assets = chain.assets
    result = ChainResult()
    for segment in plan_segments(assets, keys):
        needed = needed_in_segment(segment, assets, instance, forced, chain.settings)
        result.up_to_date.extend(key for key in segment.keys if not needed[key])
        for run_keys, span in _runs_for_segment(segment, needed):
            # A run holding any GPU asset goes to a GPU node.
            node = "gpu" if any(assets[key].node == "gpu" for key in run_keys) else "cpu"
            # Runs of the chain execute in this process: no pod to place, only the node for people and the queue.
            run_tags = {
                NODE_TAG: node,
                **tags,
                ASSETS_TAG: ",".join(k.to_user_string() for k in run_keys),
                DATA_DIR_TAG: str(chain.settings.data_dir),
            }
            partition_key = None
            if span is not None and span[0] == span[1]:
                partition_key = span[0]
            elif span is not None:
                run_tags.update({RANGE_START_TAG: span[0], RANGE_END_TAG: span[1]})
            names = ", ".join(key.to_user_string() for key in run_keys)
            months = "" if span is None else f" for {span[0]}" if span[0] == span[1] else f" for {span[0]}..{span[1]}"
            log.info("run on the %s node: %s%s", node, names, months)
            report = RunReport(log, run_keys, span)
            outcome = _execute(chain, instance, run_keys, partition_key, run_tags, report)
            failure = None if outcome.success else report.failure or f"FAILED: {names}{months}, before any step began"
            materialized = frozenset(event.asset_key for event in outcome.get_asset_materialization_events())
            result.runs.append(
                ChainRun(outcome.run_id, run_keys, span, outcome.success, failure, materialized, report.failed_asset)
            )
            if not outcome.success:
                return result
    return result
