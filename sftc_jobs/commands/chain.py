"""`sftc run` (the whole chain through the Dagster instance) and `sftc rerun` (a window of months).

Both record their runs in the instance at $DAGSTER_HOME (default `.dagster_home`, set up from
configs/dagster.yaml when missing), so the web UI shows the history afterwards. Dagster is imported
inside the commands: `sftc --help` stays quick.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sftc_core.configs import CONFIG_DIR
from sftc_core.io import atomic_write_bytes
from sftc_core.months import MONTH_PATTERN, months_between
from sftc_core.paths import ArtifactPaths
from sftc_core.settings import Settings
from sftc_core.text import markdown_table

LAUNCHED_BY_TAG = "sftc/launched_by"
# Assets whose files live under an ArtifactPaths attribute of another name.
_ARTIFACT_ATTRIBUTE = {
    "thesis_jsonl": "jsonl",
    "eval_csv": "eval_dir",
    "backtest_report": "backtest",
    "validation_report": "reports",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help=(
            "materialize the whole chain (all but the NeMo import) through the Dagster instance; "
            "only what is missing or stale"
        ),
        description="Runs go into the instance at $DAGSTER_HOME (default .dagster_home), so `make ui` shows them. "
        "A second run redoes nothing unless code, configs' code versions or inputs changed. Exit 1 when a run fails.",
    )
    run.set_defaults(func=_run)

    rerun = subparsers.add_parser(
        "rerun",
        help=(
            "re-run a window of months (raw_xml, thesis_jsonl, eval_csv) and refresh the whole-window assets downstream"
        ),
        description=(
            "Replaces exactly the window's partitions of the monthly assets, then refreshes every asset downstream of "
            "them (hf_splits ... backtest_report) and whatever that makes stale."
        ),
    )
    rerun.add_argument("--from", dest="first", required=True, metavar="YYYY-MM", help="first month of the window")
    rerun.add_argument(
        "--to", dest="last", required=True, metavar="YYYY-MM", help="last month of the window (inclusive)"
    )
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
        raise ValueError(
            f"--from {months[0]} --to {months[-1]}: no monthly partition of this profile lies in that window"
        )
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
    """Where the asset's files are: its directory under the data dir (of all its partitions),
    else the path it recorded."""
    location = getattr(paths, _ARTIFACT_ATTRIBUTE.get(asset, asset), None)
    if isinstance(location, Path):
        return _shown_path(location)
    return _shown_path(Path(str(metadata["path"].value))) if "path" in metadata else ""


def _shown_path(path: Path) -> str:
    """Relative to the working directory when inside it: shorter rows, the same path to type."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _checks_cell(evaluations: list) -> str:
    """`2/2 passed`, `1 of 3 failed: eval_parse_rate`, `1 warning: gpu_preflight`,
    or empty for an asset without checks."""
    if not evaluations:
        return ""
    failed = sorted({e.check_name for e in evaluations if not e.passed and e.severity.value == "ERROR"})
    warned = sorted({e.check_name for e in evaluations if not e.passed and e.severity.value != "ERROR"})
    if failed:
        return f"{len(failed)} of {len(evaluations)} failed: {', '.join(failed)}"
    if warned:
        return f"{len(warned)} warning{'s' * (len(warned) > 1)}: {', '.join(warned)}"
    return f"{len(evaluations)}/{len(evaluations)} passed"


def summary_table(instance, chain, keys: list, result, paths: ArtifactPaths) -> str:
    """One row per asset: what this pass did, its partitions, its checks (in the run of its latest materialization),
    when it was last materialized, where its files are."""
    import datetime as dt

    import dagster as dg

    from sftc_platform.run_history import check_evaluations

    assets = chain.assets
    done: dict = {}
    for run in result.runs:
        for key in run.keys:
            span = f" {run.partition_range[0]}..{run.partition_range[1]}" if run.partition_range else ""
            what = (
                "materialized"
                if key in run.materialized
                else "FAILED"
                if key.to_user_string() == run.failed_asset
                else "not reached"
            )
            done.setdefault(key, []).append(what + span)
    rows = []
    evaluations_of_run: dict[str, list] = {}
    for key in keys:
        asset = key.to_user_string()
        latest = instance.get_latest_materialization_event(key)
        metadata = dict(latest.asset_materialization.metadata) if latest else {}
        this_pass = "; ".join(done.get(key, [])) or ("up to date" if key in result.up_to_date else "not reached")
        partitions_def = assets[key].partitions_def
        partitions = []
        if partitions_def is not None:
            status = (
                instance.get_status_by_partition(key, partitions_def.get_partition_keys(), partitions_def) or {}
            )  # None: never materialized
            partitions = sorted(p for p, s in status.items() if s == dg.AssetPartitionStatus.MATERIALIZED)
        checks = ""
        if latest is not None:
            if latest.run_id not in evaluations_of_run:
                evaluations_of_run[latest.run_id] = check_evaluations(instance, latest.run_id)
            checks = _checks_cell([e for e in evaluations_of_run[latest.run_id] if e.asset_key == key])
        rows.append(
            {
                "asset": asset,
                "this run": this_pass,
                "partitions": f"{len(partitions)} ({partitions[0]}..{partitions[-1]})" if partitions else "",
                "checks": checks,
                "last materialized (UTC)": dt.datetime.fromtimestamp(latest.timestamp, dt.UTC).strftime(
                    "%Y-%m-%d %H:%M"
                )
                if latest
                else "never",
                "files": _artifact_location(asset, metadata, paths),
            }
        )
    return markdown_table(rows, max_cell=120)


def _materialize(args: argparse.Namespace, settings: Settings, forced_for) -> int:
    import logging

    from sftc_jobs.chain import Chain, materialize_chain
    from sftc_jobs.jobs import chain_keys
    from sftc_jobs.location import build_definitions
    from sftc_jobs.terminal import reserved_terminal

    log_file = getattr(args, "log_file", None)
    say = logging.getLogger("sftc.run")
    print(
        f"sftc {args.command}: {settings.profile_name} profile, data in {_shown_path(settings.data_dir)}"
        + (f"; Dagster's event stream and details: {_shown_path(log_file)}" if log_file else ""),
        file=sys.stderr,
        flush=True,
    )
    with reserved_terminal(log_file, say, verbose=args.verbose):
        chain = Chain.of(build_definitions(settings), settings)
        instance = open_instance()
        keys = chain_keys(chain, include_nemo=settings.train_backend == "nemo")
        forced = forced_for(chain, keys)
        result = materialize_chain(chain, instance, keys, forced=forced, tags={LAUNCHED_BY_TAG: "sftc"}, log=say)
    paths = settings.paths
    if not result.runs:
        print("nothing to do: every asset is up to date (code, settings, inputs and files unchanged)")
    print(summary_table(instance, chain, keys, result, paths))
    report_html, validation = paths.backtest / "report.html", paths.reports / "validation_report.md"
    print(f"Backtest report: {report_html.absolute().as_uri() if report_html.is_file() else 'not written'}")
    print(f"Validation report: {_shown_path(validation) if validation.is_file() else 'not written'}{_readiness(paths)}")
    print(f"Dagster instance: {_shown_path(Path(os.environ['DAGSTER_HOME']))} (`make ui` shows these runs)")
    if not result.success:
        failed = result.failed_run
        print(
            f"\n{failed.failure}\n  run {failed.run_id}" + (f"; details: {_shown_path(log_file)}" if log_file else ""),
            file=sys.stderr,
        )
        return 1
    return 0


def _readiness(paths: ArtifactPaths) -> str:
    """` (ready for GPU: YES)` from the report's JSON twin, when there is one."""
    import json

    twin = paths.reports / "validation_report.json"
    try:
        return f" (ready for GPU: {'YES' if json.loads(twin.read_text(encoding='utf-8'))['ready_for_gpu'] else 'NO'})"
    except (OSError, ValueError, KeyError):
        return ""


def _run(args: argparse.Namespace, settings: Settings) -> int:
    return _materialize(args, settings, lambda chain, keys: {})


def _rerun(args: argparse.Namespace, settings: Settings) -> int:
    months = window_months(args.first, args.last)
    return _materialize(args, settings, lambda chain, keys: window_forced(chain, keys, months))
