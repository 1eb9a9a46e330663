"""`sftc run` (the whole chain through the Dagster instance) and `sftc rerun` (a window of months).

Both record their runs in the instance at $DAGSTER_HOME (default `.dagster_home`, set up from
configs/dagster.yaml when missing), so the web UI shows the history afterwards. Dagster is imported
inside the commands: `sftc --help` stays quick.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sftc_core.configs import CONFIG_DIR
from sftc_core.io import atomic_write_bytes
from sftc_core.months import MONTH_PATTERN, months_between
from sftc_core.paths import ArtifactPaths
from sftc_core.settings import Settings
from sftc_core.text import markdown_table

LAUNCHED_BY_TAG = "sftc/launched_by"
# Assets whose files live under an ArtifactPaths attribute of another name.
_ARTIFACT_ATTRIBUTE = {"thesis_jsonl": "jsonl", "eval_csv": "eval_dir", "backtest_report": "backtest", "validation_report": "reports"}


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help="materialize the whole chain (all but the NeMo import) through the Dagster instance; only what is missing or stale",
        description="Runs go into the instance at $DAGSTER_HOME (default .dagster_home), so `make ui` shows them. "
        "A second run redoes nothing unless code, configs' code versions or inputs changed. Exit 1 when a run fails.",
    )
    run.set_defaults(func=_run)

    rerun = subparsers.add_parser(
        "rerun",
        help="re-run a window of months (raw_xml, thesis_jsonl, eval_csv) and refresh the whole-window assets downstream",
        description="Replaces exactly the window's partitions of the monthly assets, then refreshes every asset downstream "
        "of them (hf_splits ... backtest_report) and whatever that makes stale.",
    )
    rerun.add_argument("--from", dest="first", required=True, metavar="YYYY-MM", help="first month of the window")
    rerun.add_argument("--to", dest="last", required=True, metavar="YYYY-MM", help="last month of the window (inclusive)")
    rerun.set_defaults(func=_rerun)


def open_instance():
    """The instance at $DAGSTER_HOME; `.dagster_home` with configs/dagster.yaml when DAGSTER_HOME is unset."""
    import dagster as dg

    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").absolute()
    os.environ["DAGSTER_HOME"] = str(home)
    if not (home / "dagster.yaml").is_file():
        atomic_write_bytes(home / "dagster.yaml", (CONFIG_DIR / "dagster.yaml").read_bytes())
    return dg.DagsterInstance.get()


def window_months(first: str, last: str) -> list[str]:
    for option, value in (("--from", first), ("--to", last)):
        if not MONTH_PATTERN.match(value):
            raise ValueError(f"{option} {value!r}: expected a month written YYYY-MM, e.g. 2012-01")
    if last < first:
        raise ValueError(f"--from {first} --to {last}: the window ends before it starts")
    return months_between(first, last)


def window_forced(chain, keys: list, months: list[str]) -> dict:
    """The window's partitions of every partitioned asset, and every unpartitioned asset downstream of them."""
    from sftc_jobs.chain import ALL_PARTITIONS

    assets = chain.assets
    forced: dict = {}
    for key in keys:
        partitions_def = assets[key].partitions_def
        if partitions_def is not None:
            in_window = set(months) & set(partitions_def.get_partition_keys())
            if in_window:
                forced[key] = in_window
    if not forced:
        raise ValueError(f"--from {months[0]} --to {months[-1]}: no monthly partition of this profile lies in that window")
    downstream, grown = set(forced), True
    while grown:  # every asset reading one already affected
        grown = False
        for key in keys:
            if key not in downstream and assets[key].deps & downstream:
                downstream.add(key)
                grown = True
    for key in keys:
        if key not in forced and assets[key].partitions_def is None and key in downstream:
            forced[key] = ALL_PARTITIONS
    return forced


def _artifact_location(asset: str, metadata: dict, paths: ArtifactPaths) -> str:
    if "path" in metadata:
        return str(metadata["path"].value)
    location = getattr(paths, _ARTIFACT_ATTRIBUTE.get(asset, asset), None)
    return str(location) if isinstance(location, Path) else ""


def summary_table(instance, chain, keys: list, result, paths: ArtifactPaths) -> str:
    """One row per asset: what this pass did, its partitions, when it was last materialized, where its files are."""
    import datetime as dt

    import dagster as dg

    assets = chain.assets
    done: dict = {}
    for run in result.runs:
        for key in run.keys:
            span = f" {run.partition_range[0]}..{run.partition_range[1]}" if run.partition_range else ""
            done.setdefault(key, []).append(("materialized" if run.success else "FAILED") + span)
    rows = []
    for key in keys:
        asset = key.to_user_string()
        latest = instance.get_latest_materialization_event(key)
        metadata = dict(latest.asset_materialization.metadata) if latest else {}
        this_pass = "; ".join(done.get(key, [])) or ("up to date" if key in result.up_to_date else "not reached")
        partitions_def = assets[key].partitions_def
        partitions = []
        if partitions_def is not None:
            # None for an asset never materialized (a run failed before it)
            status = instance.get_status_by_partition(key, partitions_def.get_partition_keys(), partitions_def) or {}
            partitions = sorted(p for p, s in status.items() if s == dg.AssetPartitionStatus.MATERIALIZED)
        rows.append(
            {
                "asset": asset,
                "this run": this_pass,
                "partitions": f"{len(partitions)} ({partitions[0]}..{partitions[-1]})" if partitions else "",
                "last materialized (UTC)": dt.datetime.fromtimestamp(latest.timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if latest else "never",
                "files": _artifact_location(asset, metadata, paths),
            }
        )
    return markdown_table(rows, max_cell=120)


def _materialize(settings: Settings, forced_for) -> int:
    import logging

    from sftc_jobs.chain import Chain, materialize_chain
    from sftc_jobs.jobs import chain_keys
    from sftc_jobs.location import build_definitions

    chain = Chain.of(build_definitions(settings), settings)
    instance = open_instance()
    keys = chain_keys(chain, include_nemo=settings.train_backend == "nemo")
    forced = forced_for(chain, keys)
    result = materialize_chain(chain, instance, keys, forced=forced, tags={LAUNCHED_BY_TAG: "sftc"}, log=logging.getLogger("sftc.run"))
    paths = settings.paths
    print(summary_table(instance, chain, keys, result, paths))
    print(f"\nDagster instance: {os.environ['DAGSTER_HOME']} (make ui shows these runs)")
    for name, path in (("Validation report", paths.reports / "validation_report.md"), ("Backtest report", paths.backtest / "report.md")):
        print(f"{name}: {path}" + ("" if path.is_file() else " (not written)"))
    if not result.success:
        failed = result.failed_run
        print(f"\nFAILED: run {failed.run_id} ({', '.join(k.to_user_string() for k in failed.keys)}); its logs are in the web UI")
        for line in failure_lines(instance, failed.run_id):
            print(f"  {line}")
        return 1
    return 0


def failure_lines(instance, run_id: str) -> list[str]:
    """The first errors of a failed run, as they name their cause: failed steps, then failed blocking checks."""
    from sftc_resources import run_history

    lines = [f"{f.step_key}: {f.message}" for f in run_history.step_failures(instance, run_id)]
    lines += [f"check {e.check_name} failed: {e.description}" for e in run_history.check_evaluations(instance, run_id) if not e.passed and e.description]
    return lines


def _run(args: argparse.Namespace, settings: Settings) -> int:
    return _materialize(settings, lambda chain, keys: {})


def _rerun(args: argparse.Namespace, settings: Settings) -> int:
    months = window_months(args.first, args.last)
    return _materialize(settings, lambda chain, keys: window_forced(chain, keys, months))
