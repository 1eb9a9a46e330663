"""`sftc build-dataset` and `sftc export-nemo`: the dataset steps from the command line.

The logic is imported inside each command: `datasets` takes seconds to import, `sftc --help` should not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sftc_core.settings import Settings
from sftc_jobs.commands.outputs import add_force, writing_output


def register(subparsers: argparse._SubParsersAction) -> None:
    build = subparsers.add_parser(
        "build-dataset",
        help="split thesis records by time into train/validation/test (a datasets.DatasetDict)",
        description="Without --validation-days/--test-days the windows come from TRAIN_START_DATE, TRAIN_END_DATE, "
        "TEST_START_DATE and the profile's test end. Records whose label window reaches a later split are purged, then "
        "the embargo is dropped before each later split. Exit 2 on bad input or a split that would come out empty.",
    )
    build.add_argument(
        "--jsonl", required=True, type=Path, help="a records JSONL file, or a directory of monthly *.jsonl"
    )
    build.add_argument("--out-dir", required=True, type=Path, help="where the DatasetDict goes (replaced whole)")
    build.add_argument(
        "--validation-days", type=int, help="split by days: validation = the N days before the test days"
    )
    build.add_argument("--test-days", type=int, help="split by days: test = the last N days of the data")
    build.add_argument(
        "--embargo-days",
        type=int,
        help="calendar days dropped before each later split (default: sft_config splits.embargo_days)",
    )
    build.add_argument(
        "--min-samples", type=int, help="fewest records a split may have (default: sft_config splits.min_samples)"
    )
    add_force(build)
    build.set_defaults(func=_build_dataset)

    export = subparsers.add_parser(
        "export-nemo",
        help="write the splits as NeMo JSONL (training/validation/test.jsonl) with the prompt template",
        description=(
            "One line {input, output} per record of each split, the prompt of configs/sft_config.yaml as input and the "
            "target (the special tokens around the action) as output; with --tokenizer, token lengths and truncations "
            "are measured against the profile's max_seq_length. Exit 2 on bad input."
        ),
    )
    export.add_argument("--dataset-dir", required=True, type=Path, help="a DatasetDict from build-dataset")
    export.add_argument("--output-dir", required=True, type=Path, help="where the JSONL files go (replaced whole)")
    export.add_argument("--max-samples", type=int, help="at most N lines per split (the first N in time order)")
    tokenizer = export.add_mutually_exclusive_group()
    tokenizer.add_argument(
        "--tokenizer", type=Path, help="a local tokenizer directory: report token lengths and truncations"
    )
    tokenizer.add_argument(
        "--skip-tokenizer", action="store_true", help="no token statistics (the default without --tokenizer)"
    )
    add_force(export)
    export.set_defaults(func=_export_nemo)


def _build_dataset(args: argparse.Namespace, settings: Settings) -> int:
    from sftc_assets.sft_data.splits import build_dataset

    with writing_output(args, [args.out_dir], inputs=[args.jsonl], option="--out-dir") as stamp:
        summary = build_dataset(
            args.jsonl,
            args.out_dir,
            settings.sft,
            date_bounds=settings.date_bounds,
            validation_days=args.validation_days,
            test_days=args.test_days,
            embargo_days=args.embargo_days,
            min_samples=args.min_samples,
            stamp=stamp,
        )
    ranges = summary["date_ranges"]
    for name, count in summary["counts"].items():
        print(f"{name}: {count} records, {ranges[name]['first']}..{ranges[name]['last']}")
    purged = summary["purged"]
    print(
        f"purged (labels reaching a later split): {sum(purged.values())} "
        f"({', '.join(f'{k} {v}' for k, v in purged.items())}), "
        f"dropped by the {summary['embargo_days']}-day embargo: {sum(summary['dropped_by_embargo'].values())}, "
        f"outside the windows: {sum(summary['outside_windows'].values())}, "
        f"of {summary['records']} records -> {args.out_dir}"
    )
    return 0


def _export_nemo(args: argparse.Namespace, settings: Settings) -> int:
    from sftc_assets.sft_data.nemo_export import export_nemo

    with writing_output(
        args, [args.output_dir], inputs=[args.dataset_dir, args.tokenizer], option="--output-dir"
    ) as stamp:
        summary = export_nemo(
            args.dataset_dir,
            args.output_dir,
            settings.sft,
            max_samples=args.max_samples,
            tokenizer_path=args.tokenizer,
            stamp=stamp,
        )
    print(json.dumps({k: summary[k] for k in ("counts", "token_stats")}, indent=2))
    return 0
