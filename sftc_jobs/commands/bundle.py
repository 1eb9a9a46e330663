"""`sftc bundle --out FILE`: one archive of the reports, eval CSVs, configs, settings, artifact markers, run manifests
and bench CSVs for a reviewer or the GPU team (sftc_assets/reports/bundle.py); never checkpoints, weights or `.env`,
and no file that holds an API key's value."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

from sftc_core.settings import Settings
from sftc_jobs.commands.outputs import add_force, writing_output


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bundle",
        help=(
            "one archive of what a reviewer or the GPU team needs "
            "(reports, eval CSVs, configs, manifests, bench CSVs; no checkpoints, no secrets)"
        ),
        description=(
            "Write one archive (.tar.gz, .tgz or .zip) of the validation and GPU check reports, the backtest report "
            "and eval CSVs, the fine-tune's metrics and loss curves, every config file and the effective settings, the "
            "artifacts' markers (each file's SHA-256, so checkpoints are named, not shipped), the run manifests of the "
            "Dagster instance at DAGSTER_HOME and the bench CSVs, with MANIFEST.json (every member's size and SHA-256, "
            "what was left out or missing, and why) and SHA256SUMS. Never checkpoints, weights or .env; a file holding "
            "the value of EODHD_API_KEY or SFTC_EVAL_API_KEY is left out and named in the manifest."
        ),
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="FILE",
        help="the archive to write: FILE.tar.gz, FILE.tgz or FILE.zip",
    )
    add_force(parser)
    parser.set_defaults(func=run_bundle)


def run_manifests() -> list[dict] | None:
    """The latest materialization of each asset in the Dagster instance at DAGSTER_HOME, with its run manifest
    (None: no instance)."""
    home = os.environ.get("DAGSTER_HOME")
    if not home or not (Path(home) / "dagster.yaml").is_file():
        return None
    import dagster as dg

    from sftc_assets.reports.validation import CHAIN_STAGES, GPU_ONLY_STAGES

    instance = dg.DagsterInstance.get()
    try:
        rows = []
        for asset in (*CHAIN_STAGES, *GPU_ONLY_STAGES, "validation_report"):
            event = instance.get_latest_materialization_event(dg.AssetKey(asset))
            if event is None:
                continue
            materialization = event.asset_materialization
            manifest = materialization.metadata.get("run_manifest")
            rows.append(
                {
                    "asset": asset,
                    "partition": materialization.partition,
                    "run_id": event.run_id,
                    "materialized_at": dt.datetime.fromtimestamp(event.timestamp, dt.UTC).isoformat(timespec="seconds"),
                    "run_manifest": manifest.value if manifest is not None else None,
                }
            )
        return rows
    finally:
        instance.dispose()


def run_bundle(args: argparse.Namespace, settings: Settings) -> int:
    from sftc_assets.reports import bundle
    from sftc_core.manifest import git_state

    bundle.format_of(args.out)  # a wrong name fails before any work
    contents = bundle.collect(settings, run_manifests=run_manifests())
    sources = {path.parent for path, _ in contents.files}
    with writing_output(args, [args.out], inputs=sorted(sources), option="--out") as stamp:
        manifest = bundle.write_bundle(args.out, contents, settings, git_state(), stamp)
    for entry in manifest["left_out"]:
        print(f"sftc bundle: left out {entry['path']}: {entry['reason']}", file=sys.stderr)
    size = args.out.stat().st_size
    print(
        json.dumps(
            {
                "out": str(args.out),
                "bytes": size,
                "files": len(manifest["files"]),
                "left_out": len(manifest["left_out"]),
                "missing": manifest["missing"],
            },
            indent=2,
        )
    )
    return 0
