"""The dataset assets: `hf_splits` (time splits of every thesis record) and `nemo_jsonl` (the NeMo files)."""

from pathlib import Path

import dagster as dg
from datasets import load_from_disk

from sftc_assets.common.asset_helpers import code_version, manifest_metadata, markdown_table
from sftc_assets.common.io import read_jsonl
from sftc_assets.datasets import nemo_export, prompts, splits
from sftc_resources.resources import ProjectResource
from sftc_resources.routing import asset_placement
from sftc_resources.settings import load_settings, load_sft_config

_PROFILE = load_settings().profile_name
PREVIEW_ROWS = 3


def _preview(rows: list[dict], columns: list[str]) -> str:
    return markdown_table([{c: row[c] for c in columns} for row in rows], columns, max_cell=120)


@dg.asset(
    deps=[dg.AssetDep("thesis_jsonl", partition_mapping=dg.AllPartitionMapping())],
    code_version=code_version(splits, prompts),
    kinds={"huggingface", "python"},
    description="Every thesis record split by as_of_date into train / validation / test, embargoed (datasets.DatasetDict).",
    **asset_placement("cpu", _PROFILE),
)
def hf_splits(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
    settings, paths = project.settings(), project.paths()
    summary = splits.build_dataset(
        paths.jsonl,
        paths.hf_splits,
        load_sft_config(),
        date_bounds=(settings.train_start_date, settings.train_end_date, settings.test_start_date, settings.test_end_date),
    )
    context.log.info("splits %s from %d records", summary["counts"], summary["records"])
    dataset = load_from_disk(str(paths.hf_splits))
    tables = [
        f"**{name}**\n\n" + _preview(dataset[name].select(range(min(PREVIEW_ROWS, len(dataset[name])))).to_list(), ["id", "as_of_date", "action", "reasoning"])
        for name in splits.SPLITS
    ]
    # The target in a code block: its tags would be taken for HTML in a table.
    preview = "\n\n".join([*tables, f"**first train target**\n\n```\n{dataset['train'][0]['output']}\n```"])
    ranges = summary["date_ranges"]
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(paths.hf_splits)),
            "records": summary["records"],
            "dagster/row_count": sum(summary["counts"].values()),
            **{f"{name}_count": count for name, count in summary["counts"].items()},
            **{f"{name}_dates": f"{ranges[name]['first']}..{ranges[name]['last']}" for name in splits.SPLITS},
            "embargo_days": summary["embargo_days"],
            "dropped_by_embargo": sum(summary["dropped_by_embargo"].values()),
            "outside_windows": sum(summary["outside_windows"].values()),
            "max_label_span_days": summary["max_label_span_days"],
            "actions": dg.MetadataValue.json(summary["actions"]),
            "preview": dg.MetadataValue.md(preview),
            **manifest_metadata("sft_config.yaml"),
        }
    )


@dg.asset_check(asset=hf_splits, blocking=True, description="No id in two splits; each split ends more than the embargo before the next begins.")
def splits_disjoint_and_ordered(project: ProjectResource) -> dg.AssetCheckResult:
    problems = splits.split_problems(project.paths().hf_splits)
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": dg.MetadataValue.json(problems[:20]), "problem_count": len(problems)})


@dg.asset(
    deps=[hf_splits],
    code_version=code_version(nemo_export, prompts),
    kinds={"json", "python"},
    description="training / validation / test JSONL for NeMo: {input: rendered prompt, output: target}; token lengths "
    "when base_checkpoint's tokenizer exists.",
    **asset_placement("cpu", _PROFILE),
)
def nemo_jsonl(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
    paths = project.paths()
    # The toy tokenizer is trained later from these files (base_checkpoint); stats appear once it exists.
    has_tokenizer = any((paths.base_checkpoint / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer_dir: Path | None = paths.base_checkpoint if has_tokenizer else None
    summary = nemo_export.export_nemo(paths.hf_splits, paths.nemo_jsonl, load_sft_config(), tokenizer_path=tokenizer_dir)
    context.log.info("NeMo lines %s, tokenizer %s", summary["counts"], tokenizer_dir or "none")
    first = read_jsonl(paths.nemo_jsonl / nemo_export.NEMO_FILES["train"])[:1]
    preview = "\n\n".join(f"**input**\n\n```\n{row['input']}\n```\n\n**output**\n\n```\n{row['output']}\n```" for row in first)
    stats = summary["token_stats"]
    token_metadata = (
        {
            "prompt_tokens_p95": stats["prompt"]["p95"],
            "total_tokens_max": stats["total"]["max"],
            "truncated": stats["truncated"],
            "token_stats": dg.MetadataValue.json(stats),
        }
        if stats
        else {"token_stats": "no tokenizer yet (base_checkpoint not materialized)"}
    )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(paths.nemo_jsonl)),
            "dagster/row_count": sum(summary["counts"].values()),
            **{f"{name}_lines": count for name, count in summary["counts"].items()},
            **token_metadata,
            "preview": dg.MetadataValue.md(preview),
            **manifest_metadata("sft_config.yaml"),
        }
    )


@dg.asset_check(asset=nemo_jsonl, blocking=True, description="Every line parses as {input, output} and the output carries every special token.")
def special_tokens_in_every_line(project: ProjectResource) -> dg.AssetCheckResult:
    special_tokens = load_sft_config().special_tokens
    lines, problems = 0, []
    for name in nemo_export.NEMO_FILES.values():
        count, found = nemo_export.nemo_file_problems(project.paths().nemo_jsonl / name, special_tokens)
        lines += count
        problems += found
    return dg.AssetCheckResult(passed=not problems, metadata={"lines": lines, "problem_count": len(problems), "problems": dg.MetadataValue.json(problems[:20])})
