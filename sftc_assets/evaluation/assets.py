"""The `eval_csv` asset: per month of the test window, the fine-tuned model's answers and forward returns."""

import dagster as dg
import pandas as pd

from sftc_assets.evaluation import evaluate, results
from sftc_core.metrics import classification_metrics
from sftc_core.settings import Settings
from sftc_core.text import markdown_table
from sftc_resources import prices as price_sources
from sftc_resources.metadata import code_version, manifest_metadata
from sftc_resources.partitions import month_partitions
from sftc_resources.resources import GpuResource
from sftc_resources.routing import asset_placement
from sftc_resources.writes import writing

GROUP = "evaluation"
PREVIEW_ROWS = 5
PARSE_RATE_CHECK = "eval_parse_rate"


class EvalRunConfig(dg.Config):
    """Launchpad overrides, as `sftc evaluate`'s flags (e.g. a quick smoke evaluation); None = the profile's."""

    max_new_tokens: int | None = None
    batch_size: int | None = None


def _month_figures(frame) -> dict:
    figures = classification_metrics(frame["true_action"].to_numpy(object), frame["predicted_action"].to_numpy(object))
    return {
        "rows": figures["rows"],
        "parse_rate": figures["parse_rate"],
        "accuracy": figures["accuracy"],
        "mcc": figures["mcc"],
        "returns_ok": int((frame["return_status"] == "ok").sum()),
    }


def defs(settings: Settings) -> dg.Definitions:
    paths = settings.paths

    def _evaluate_months(context: dg.AssetExecutionContext, config: EvalRunConfig, gpu: GpuResource, months: list[str], stamp) -> tuple:
        """Answer the months' test theses and write one eval CSV a month; (figures by month, frames, device)."""
        device = gpu.device_for_checkpoint("eval_csv", paths.sft_model, settings.profile.compute.cpu_max_checkpoint_bytes, "sft_model")
        records = evaluate.load_test_records(paths.hf_splits, months=months)
        context.log.info("%d test theses in %s on %s", len(records), ", ".join(months), device)
        model, tokenizer = evaluate.load_model(paths.sft_model, device) if len(records) else (None, None)
        source = price_sources.price_source_from_settings(settings)
        by_month, frames = {}, []
        for month in months:
            month_records = records[records["as_of_date"].str[:7] == month].reset_index(drop=True)
            frame = evaluate.evaluate_records(
                model, tokenizer, month_records, source, settings.sft,
                max_new_tokens=config.max_new_tokens or settings.profile.evaluation.max_new_tokens,
                batch_size=config.batch_size or settings.profile.evaluation.batch_size,
                calendar=settings.prices.calendar,
                cpu_threads=settings.profile.evaluation.cpu_threads,
            )  # fmt: skip
            results.write_eval_csv(frame, paths.eval_month(month), stamp)
            by_month[month] = _month_figures(frame)
            frames.append(frame)
            context.log.info("%s: %s", month, by_month[month])
        return by_month, frames, device

    @dg.asset(
        partitions_def=month_partitions(settings.test_months),
        deps=["sft_model", "hf_splits"],
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GROUP,
        # The price source decides the forward returns: its code is part of this asset's.
        code_version=code_version("eval_csv", settings, evaluate, results, price_sources),
        kinds={"pytorch", "csv"},
        check_specs=[dg.AssetCheckSpec(PARSE_RATE_CHECK, asset="eval_csv", description="Each month's share of outputs with a parsable action is at least eval_config min_parse_rate.")],
        description="Per month of the test window: greedy answers of sft_model to the test theses, the parsed action and the "
        "forward return (spec/eval-and-backtest.md), one CSV a month under data/eval/.",
        **asset_placement("auto", settings),
    )
    def eval_csv(context: dg.AssetExecutionContext, config: EvalRunConfig, gpu: GpuResource) -> dg.MaterializeResult:
        months = list(context.partition_keys)
        targets = [t for month in months for t in settings.artifacts_of("eval_csv", month)]
        with writing(settings, "eval_csv", targets, inputs=[("sft_model", None), ("hf_splits", None)]) as stamp:
            by_month, frames, device = _evaluate_months(context, config, gpu, months, stamp)
        min_parse_rate = settings.eval_config.min_parse_rate

        low = {m: f["parse_rate"] for m, f in by_month.items() if f["rows"] and f["parse_rate"] < min_parse_rate}
        total = sum(f["rows"] for f in by_month.values())
        check = dg.AssetCheckResult(
            check_name=PARSE_RATE_CHECK,
            passed=not low,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"months below a parse rate of {min_parse_rate:.0%}: {', '.join(low)}" if low else None,
            metadata={"min_parse_rate": min_parse_rate, "parse_rate_by_month": dg.MetadataValue.json({m: f["parse_rate"] for m, f in by_month.items()})},
        )
        head = next((f for f in frames if len(f)), frames[0]).head(PREVIEW_ROWS)
        preview = markdown_table(head.astype(str).to_dict("records"), ["id", "true_action", "predicted_action", "forward_return", "return_status", "raw_output"])
        single = by_month[months[0]] if len(months) == 1 else None
        figures = single or _month_figures(pd.concat(frames, ignore_index=True))
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(paths.eval_month(months[0]) if len(months) == 1 else paths.eval_dir)),
                "months": ", ".join(months),
                "dagster/row_count": total,
                **{name: value for name, value in figures.items() if value is not None},  # no rows: no rates
                "device": device,
                "by_month": dg.MetadataValue.md(markdown_table([{"month": m, **f} for m, f in by_month.items()])),
                "preview": dg.MetadataValue.md(preview),
                **manifest_metadata(settings, "eval_csv"),
            },
            check_results=[check],
        )

    return dg.Definitions(assets=[eval_csv])
