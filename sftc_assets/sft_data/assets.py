"""The fine-tuning data assets: `hf_splits` (time splits of every thesis record) and `nemo_jsonl` (the NeMo files,
with token lengths measured by base_checkpoint's tokenizer)."""

from collections import Counter
from pathlib import Path

import dagster as dg

from sftc_assets.sft_data import nemo_export, splits
from sftc_core.io import read_jsonl
from sftc_core.nemo_format import NEMO_FILES, file_problems, split_file
from sftc_core.settings import Settings
from sftc_core.text import format_number, markdown_table
from sftc_platform.metadata import asset_metadata, code_version, report_summary
from sftc_platform.routing import asset_placement
from sftc_platform.writes import data_version, writing

GROUP = "sft_data"
PREVIEW_ROWS = 3


def _preview(rows: list[dict], columns: list[str]) -> str:
    return markdown_table([{c: row[c] for c in columns} for row in rows], columns, max_cell=120)


def _records_by_month(dataset) -> list[dict]:
    """Records per month of as_of_date in each split."""
    by_month: dict[str, dict] = {}
    for name in splits.SPLITS:
        for month, count in sorted(Counter(date[:7] for date in dataset[name]["as_of_date"]).items()):
            by_month.setdefault(month, {"month": month, **dict.fromkeys(splits.SPLITS, 0)})[name] = count
    return [by_month[month] for month in sorted(by_month)]


def _has_tokenizer(checkpoint_dir) -> bool:
    return any((checkpoint_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))


def materialize_hf_splits(context: dg.AssetExecutionContext, settings: Settings) -> dg.MaterializeResult:
    paths = settings.paths
    with writing(settings, "hf_splits", [paths.hf_splits], inputs=[("thesis_jsonl", settings.thesis_months)]) as stamp:
        summary = splits.build_dataset(
            paths.jsonl, paths.hf_splits, settings.sft, date_bounds=settings.date_bounds, stamp=stamp
        )
    context.log.info("splits %s from %d records", summary["counts"], summary["records"])
    dataset = splits.load_splits(paths.hf_splits)
    columns = ["id", "as_of_date", "action", "reasoning"]
    firsts = {name: dataset[name].select(range(min(PREVIEW_ROWS, len(dataset[name])))) for name in splits.SPLITS}
    tables = [f"**{name}**\n\n" + _preview(rows.to_list(), columns) for name, rows in firsts.items()]
    # The target in a code block: its tags would be taken for HTML in a table.
    preview = "\n\n".join([*tables, f"**first train target**\n\n```\n{dataset['train'][0]['output']}\n```"])
    ranges = summary["date_ranges"]
    counts = summary["counts"]
    dropped, purged = sum(summary["dropped_by_embargo"].values()), sum(summary["purged"].values())
    report_summary(
        context,
        "hf_splits",
        ", ".join(f"{name} {format_number(counts[name])}" for name in splits.SPLITS)
        + f" ({format_number(purged)} purged, {format_number(dropped)} embargoed)",
    )
    return dg.MaterializeResult(
        metadata=asset_metadata(
            settings,
            "hf_splits",
            {
                "path": dg.MetadataValue.path(str(paths.hf_splits)),
                "records": summary["records"],
                "dagster/row_count": sum(summary["counts"].values()),
                **{f"{name}_count": count for name, count in summary["counts"].items()},
                **{f"{name}_dates": f"{ranges[name]['first']}..{ranges[name]['last']}" for name in splits.SPLITS},
                "embargo_days": summary["embargo_days"],
                "purged": purged,
                **{f"purged_from_{name}": count for name, count in summary["purged"].items()},
                "dropped_by_embargo": dropped,
                "outside_windows": sum(summary["outside_windows"].values()),
                "max_label_span_days": summary["max_label_span_days"],
                "actions": dg.MetadataValue.json(summary["actions"]),
                # The whole window at a glance: what each month of thesis_jsonl became.
                "records_by_month": dg.MetadataValue.md(markdown_table(_records_by_month(dataset))),
                "preview": dg.MetadataValue.md(preview),
            },
        ),
        data_version=data_version([paths.hf_splits]),
    )


def check_splits_disjoint_and_ordered(dataset_dir: Path) -> dg.AssetCheckResult:
    problems = splits.split_problems(dataset_dir)
    return dg.AssetCheckResult(
        passed=not problems, metadata={"problems": dg.MetadataValue.json(problems[:20]), "problem_count": len(problems)}
    )


def materialize_nemo_jsonl(context: dg.AssetExecutionContext, settings: Settings) -> dg.MaterializeResult:
    paths = settings.paths
    tokenizer_dir = settings.base_checkpoint_dir
    if not _has_tokenizer(tokenizer_dir):
        # The full profile's release may sit on the GPU nodes' volume only: files written, lengths not measured.
        context.log.warning("%s: no tokenizer here; token lengths not measured", tokenizer_dir)
        tokenizer_dir = None
    inputs = [("hf_splits", None), ("base_checkpoint", None)]
    with writing(settings, "nemo_jsonl", [paths.nemo_jsonl], inputs=inputs) as stamp:
        summary = nemo_export.export_nemo(
            paths.hf_splits, paths.nemo_jsonl, settings.sft, tokenizer_path=tokenizer_dir, stamp=stamp
        )
    context.log.info("NeMo lines %s, tokenizer %s", summary["counts"], tokenizer_dir)
    lines = sum(summary["counts"].values())
    stats = summary["token_stats"]
    if stats:
        tokens = f"; prompts p95 {format_number(stats['prompt']['p95'])} tokens, {stats['truncated']} truncated"
    else:
        tokens = "; token lengths not measured"
    report_summary(context, "nemo_jsonl", f"{format_number(lines)} lines{tokens}")
    first = read_jsonl(split_file(paths.nemo_jsonl, "train"))[:1]
    preview = "\n\n".join(
        f"**input**\n\n```\n{row['input']}\n```\n\n**output**\n\n```\n{row['output']}\n```" for row in first
    )
    token_metadata = (
        {
            "prompt_tokens_p95": stats["prompt"]["p95"],
            "total_tokens_max": stats["total"]["max"],
            "truncated": stats["truncated"],
            "token_stats": dg.MetadataValue.json(stats),
        }
        if stats
        else {"token_stats": f"not measured: no tokenizer at {settings.base_checkpoint_dir}"}
    )
    return dg.MaterializeResult(
        metadata=asset_metadata(
            settings,
            "nemo_jsonl",
            {
                "path": dg.MetadataValue.path(str(paths.nemo_jsonl)),
                "dagster/row_count": lines,
                **{f"{name}_lines": count for name, count in summary["counts"].items()},
                **token_metadata,
                "preview": dg.MetadataValue.md(preview),
            },
        ),
        data_version=data_version([paths.nemo_jsonl]),
    )


def check_special_tokens_in_every_line(nemo_dir: Path, special_tokens: list[str]) -> dg.AssetCheckResult:
    lines, problems = 0, []
    for name in NEMO_FILES.values():
        count, found = file_problems(nemo_dir / name, special_tokens)
        lines += count
        problems += found
    metadata = {"lines": lines, "problem_count": len(problems), "problems": dg.MetadataValue.json(problems[:20])}
    return dg.AssetCheckResult(passed=not problems, metadata=metadata)


def defs(settings: Settings) -> dg.Definitions:
    paths = settings.paths

    @dg.asset(
        deps=[dg.AssetDep("thesis_jsonl", partition_mapping=dg.AllPartitionMapping())],
        group_name=GROUP,
        code_version=code_version("hf_splits", settings, splits),
        kinds={"huggingface", "python"},
        description="Every thesis record split by as_of_date into train / validation / test (datasets.DatasetDict): "
        "records whose label window reaches a later split purged, then the embargo dropped before each later split.",
        **asset_placement("cpu", settings),
    )
    def hf_splits(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return materialize_hf_splits(context, settings)

    @dg.asset_check(
        asset=hf_splits,
        blocking=True,
        description="No id in two splits; each split ends more than the embargo before the next begins; "
        "no label window (entry to exit session, recomputed from the calendar) reaches a later split.",
    )
    def splits_disjoint_and_ordered() -> dg.AssetCheckResult:
        return check_splits_disjoint_and_ordered(paths.hf_splits)

    @dg.asset(
        # The token lengths are measured with base_checkpoint's tokenizer: it is an input like the splits.
        deps=[hf_splits, "base_checkpoint"],
        group_name=GROUP,
        code_version=code_version("nemo_jsonl", settings, nemo_export),
        kinds={"json", "python"},
        description="training / validation / test JSONL for NeMo: {input: rendered prompt, output: target}, with the "
        "token lengths of prompts and targets under base_checkpoint's tokenizer.",
        **asset_placement("cpu", settings),
    )
    def nemo_jsonl(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return materialize_nemo_jsonl(context, settings)

    @dg.asset_check(
        asset=nemo_jsonl,
        blocking=True,
        description="Every line parses as {input, output} and the output carries every special token.",
    )
    def special_tokens_in_every_line() -> dg.AssetCheckResult:
        return check_special_tokens_in_every_line(paths.nemo_jsonl, settings.sft.special_tokens)

    return dg.Definitions(
        assets=[hf_splits, nemo_jsonl], asset_checks=[splits_disjoint_and_ordered, special_tokens_in_every_line]
    )
