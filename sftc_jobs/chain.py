"""Materialize a chain of assets through a Dagster instance, in order, redoing only what needs it.

Dagster 1.13 refuses an asset job whose assets have different partitions definitions (the monthly
theses, the test-window months of `eval_csv`, and the unpartitioned assets between them), so one run
cannot carry the whole chain. This module cuts the chain into segments of one partitions definition
each, in dependency order, and runs each segment through the code location's implicit asset job
(`__ASSET_JOB`, what the web UI's "Materialize" uses): the partitions of a segment go in one run per
contiguous range (`dagster/asset_partition_range_start` / `_end`, the single-run backfill the
partitioned assets declare). Before each segment it asks the instance what is missing, stale
(`StaleStatus`: code version or an input's data version changed) or older than one of its inputs, so a
second pass redoes nothing.
`sftc run`, `sftc rerun` and the `cpu_validation` job all go through `materialize_chain`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

from sftc_jobs.sensors import asset_node_class
from sftc_resources.routing import node_tags

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
ALL_PARTITIONS = "*"

# Partition keys an asset needs in a run: {None} for an unpartitioned asset that needs it, empty for none.
Needed = dict[dg.AssetKey, set[str | None]]


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


def toposorted_keys(asset_graph, keys: Iterable[dg.AssetKey]) -> list[dg.AssetKey]:
    wanted = set(keys)
    return [key for level in asset_graph.toposorted_asset_keys_by_level for key in sorted(level) if key in wanted]


def plan_segments(asset_graph, keys: Iterable[dg.AssetKey]) -> list[Segment]:
    """Cut `keys` into segments of one partitions definition each; every segment's inputs come from earlier ones."""
    order = toposorted_keys(asset_graph, keys)
    in_chain = set(order)
    done: set[dg.AssetKey] = set()
    segments = []

    def ready(key: dg.AssetKey, available: set[dg.AssetKey]) -> bool:
        return (asset_graph.get(key).parent_keys & in_chain) <= available

    while len(done) < len(order):
        first = next(key for key in order if key not in done and ready(key, done))
        partitions_def = asset_graph.get(first).partitions_def
        members = [first]
        grown = True
        while grown:  # take in every later asset of the same partitions definition whose inputs are available
            grown = False
            for key in order:
                if key in done or key in members or asset_graph.get(key).partitions_def != partitions_def:
                    continue
                if ready(key, done | set(members)):
                    members.append(key)
                    grown = True
        members.sort(key=order.index)
        segments.append(Segment(tuple(members), partitions_def))
        done.update(members)
    return segments


def stale_status_resolver(instance: dg.DagsterInstance, asset_graph) -> CachingStaleStatusResolver:
    """Dagster's own staleness (what the UI shows as stale / missing), read fresh from the instance."""
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=asset_graph, loading_context=view)


def all_partitions(partitions_def: dg.PartitionsDefinition | None, instance: dg.DagsterInstance) -> list[str | None]:
    if partitions_def is None:
        return [None]
    return list(partitions_def.get_partition_keys(dynamic_partitions_store=instance))


def latest_materializations(instance: dg.DagsterInstance, key: dg.AssetKey, partitioned: bool) -> dict[str | None, int]:
    """Storage id of the latest materialization of each partition (key None for an unpartitioned asset)."""
    if partitioned:
        return dict(instance.get_latest_storage_id_by_partition(key, dg.DagsterEventType.ASSET_MATERIALIZATION))
    records = instance.fetch_materializations(key, limit=1).records
    return {None: records[0].storage_id} if records else {}


def needed_in_segment(
    segment: Segment,
    asset_graph,
    instance: dg.DagsterInstance,
    forced: Mapping[dg.AssetKey, Iterable[str | None] | str],
) -> Needed:
    """What each asset of the segment must (re)materialize: forced; missing or stale for Dagster (code
    version, input data versions); or with an input materialized after it. Dagster's staleness does not
    follow an unpartitioned asset's dependency on all partitions of a time-partitioned one (hf_splits on
    thesis_jsonl, backtest_report on eval_csv), so the last rule is ours. Whatever an upstream asset of
    the same segment redoes is redone downstream too (it will be newer once that runs)."""
    resolver = stale_status_resolver(instance, asset_graph)
    latest: dict[dg.AssetKey, dict[str | None, int]] = {}

    def latest_of(key: dg.AssetKey) -> dict[str | None, int]:
        if key not in latest:
            latest[key] = latest_materializations(instance, key, asset_graph.get(key).is_partitioned)
        return latest[key]

    def input_newer(key: dg.AssetKey, partition: str | None) -> bool:
        mine = latest_of(key).get(partition)
        for parent in asset_graph.get(key).parent_keys:
            ids = latest_of(parent)
            same_partitions = asset_graph.get(parent).partitions_def == segment.partitions_def and partition is not None
            newest = ids.get(partition) if same_partitions else max(ids.values(), default=None)
            if mine is not None and newest is not None and newest > mine:
                return True
        return False

    needed: Needed = {}
    for key in segment.keys:
        partitions = all_partitions(segment.partitions_def, instance)
        force = forced.get(key, ())
        wanted = set(partitions) if force == ALL_PARTITIONS else set(force) & set(partitions)
        wanted |= {
            p for p in partitions if resolver.get_status(key, p) in (StaleStatus.MISSING, StaleStatus.STALE) or input_newer(key, p)
        }
        for parent in asset_graph.get(key).parent_keys & set(needed):
            # Same partitions definition: partition P of the child reads partition P of the parent.
            wanted |= needed[parent] if segment.partitions_def is not None else ({None} if needed[parent] else set())
        needed[key] = wanted
    return needed


def contiguous_ranges(keys: Iterable[str], partitions_def: dg.PartitionsDefinition, instance) -> list[tuple[str, str]]:
    """Runs of consecutive partition keys, as (first, last) pairs in the definition's order."""
    order = {key: i for i, key in enumerate(partitions_def.get_partition_keys(dynamic_partitions_store=instance))}
    ranges: list[list[str]] = []
    for key in sorted(keys, key=order.__getitem__):
        if ranges and order[key] == order[ranges[-1][-1]] + 1:
            ranges[-1].append(key)
        else:
            ranges.append([key])
    return [(run[0], run[-1]) for run in ranges]


def _runs_for_segment(segment: Segment, needed: Needed, instance) -> list[tuple[tuple[dg.AssetKey, ...], tuple[str, str] | None]]:
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
            runs.extend((tuple(keys), span) for span in contiguous_ranges(partitions, segment.partitions_def, instance))
    return runs


def materialize_chain(
    defs: dg.Definitions,
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
    forced = forced or {}
    asset_graph = defs.resolve_asset_graph()
    job = defs.resolve_implicit_global_asset_job_def()

    result = ChainResult()
    for segment in plan_segments(asset_graph, keys):
        needed = needed_in_segment(segment, asset_graph, instance, forced)
        result.up_to_date.extend(key for key in segment.keys if not needed[key])
        for run_keys, span in _runs_for_segment(segment, needed, instance):
            # A run holding any GPU asset goes to a GPU node.
            node = "gpu" if any(asset_node_class(defs.resolve_assets_def(key)) == "gpu" for key in run_keys) else "cpu"
            run_tags = {**node_tags(node), **(tags or {})}
            if span is not None:
                run_tags.update({RANGE_START_TAG: span[0], RANGE_END_TAG: span[1]})
            names = ", ".join(key.to_user_string() for key in run_keys)
            log.info("materializing %s%s on the %s node", names, f" [{span[0]}..{span[1]}]" if span else "", node)
            outcome = job.execute_in_process(instance=instance, asset_selection=list(run_keys), tags=run_tags, raise_on_error=False)
            result.runs.append(ChainRun(outcome.run_id, run_keys, span, outcome.success))
            if not outcome.success:
                log.error("run %s failed (%s): see its logs in the web UI", outcome.run_id, names)
                return result
    return result
