"""The `eval_csv` asset: per month of the test window, the fine-tuned model's answers and forward returns.

The answers come from an OpenAI-compatible server (answers.open_answers): the profile's or the run's endpoint,
else a server started for the run and stopped after it (vLLM's CPU build for the toy on this node, vLLM or SGLang
on GPU nodes, transformers serve as a fallback), else (`server: none`) the in-process generate.
"""

import contextlib

import dagster as dg
import pandas as pd

from sftc_assets.evaluation import answers, completions, evaluate, results, servers
from sftc_core.configs import profile_path
from sftc_core.metrics import classification_metrics
from sftc_core.progress import reporting
from sftc_core.settings import Settings
from sftc_core.text import format_number, format_share, markdown_table
from sftc_platform import prices as price_sources
from sftc_platform.metadata import asset_metadata, code_version, partition_metadata, report_summary
from sftc_platform.partitions import month_partitions
from sftc_platform.resources import GpuResource
from sftc_platform.routing import COMPUTE_CLASSES, asset_placement
from sftc_platform.writes import writing

GROUP = "evaluation"
PREVIEW_ROWS = 5
PARSE_RATE_CHECK = "eval_parse_rate"


class EvalRunConfig(dg.Config):
    """Launchpad overrides, as `sftc evaluate`'s flags (e.g. a quick smoke evaluation); None = the profile's."""

    max_new_tokens: int | None = None
    batch_size: int | None = None
    endpoint: str | None = None
    """An OpenAI-compatible server already running (http://host:port); no server is started."""
    server: str | None = None
    """transformers | vllm | sglang | none (the in-process fallback)."""
    concurrency: int | None = None


def _month_figures(frame) -> dict:
    figures = classification_metrics(frame["true_action"].to_numpy(object), frame["predicted_action"].to_numpy(object))
    return {
        "rows": figures["rows"],
        "parse_rate": figures["parse_rate"],
        "accuracy": figures["accuracy"],
        "mcc": figures["mcc"],
        "returns_ok": int((frame["return_status"] == "ok").sum()),
    }


def _answered_by(answerer) -> dict:
    """Which model, engine, engine version and settings answered: metadata people compare runs by."""
    if answerer is None:
        return {}
    about = answerer.about
    return {
        "engine": f"{about['engine']} {about['engine_version']}",
        "served_model": about.get("served_model") or about.get("model_dir", ""),
        "special_tokens": about.get("decoding", {}).get("special_tokens", "kept (decoded in process)"),
        "answered_by": dg.MetadataValue.json(about),
    }


def _device(settings: Settings, gpu: GpuResource, endpoint: str | None, server: str) -> str:
    """Where this node's share of the answering runs; the GPU gate fails at once when the node lacks it."""
    if endpoint:
        return "remote (the endpoint's)"
    cpu_max = settings.profile.compute.cpu_max_checkpoint_bytes
    device = gpu.device_for_checkpoint("eval_csv", settings.paths.sft_model, cpu_max, "sft_model")
    if device == "cpu" or server in ("transformers", "none"):
        return device  # vLLM's CPU build serves a checkpoint within the profile's CPU limit on a node without GPUs
    plan = servers.gpu_plan(settings, server)
    if plan.nodes == 1:
        gpu.require_gpus("eval_csv", plan.gpus_per_node, plan.gpu_memory_bytes)
    return plan.hardware


def _evaluate_months(
    context: dg.AssetExecutionContext,
    settings: Settings,
    config: EvalRunConfig,
    gpu: GpuResource,
    months: list[str],
    stamp,
) -> tuple:
    """Answer the months' test theses and write one eval CSV a month; (figures by month, frames, device, who
    answered)."""
    paths = settings.paths
    evaluation = settings.profile.evaluation
    endpoint, server = config.endpoint or evaluation.endpoint, config.server or evaluation.server
    records = evaluate.load_test_records(paths.hf_splits, months=months)
    device = _device(settings, gpu, endpoint, server) if len(records) else "none needed"
    answering_by = f"endpoint {endpoint}" if endpoint else f"server {server} on {device}"
    context.log.info("%d test theses in %s; %s", len(records), ", ".join(months), answering_by)
    source = price_sources.price_source_from_settings(settings)
    by_month, frames = {}, []
    answering = (
        answers.open_answers(
            settings,
            server=server,
            endpoint=endpoint,
            model_dir=paths.sft_model,
            device=device,
            max_new_tokens=config.max_new_tokens or evaluation.max_new_tokens,
            batch_size=config.batch_size or evaluation.batch_size,
            concurrency=config.concurrency or evaluation.concurrency,
            served_model=evaluation.served_model,
        )
        if len(records)
        else contextlib.nullcontext()
    )
    try:
        with answering as answerer:
            for month in months:
                month_records = records[records["as_of_date"].str[:7] == month].reset_index(drop=True)
                every_s = settings.eval_config.client.progress_every_seconds
                with reporting(f"eval_csv {month}", "row", log=context.log.info, every_s=every_s) as report:
                    frame = evaluate.evaluate_to_csv(
                        month_records,
                        answerer,
                        source,
                        settings.sft,
                        paths.eval_month(month),
                        staging=paths.eval_staging(month),
                        calendar=settings.prices.calendar,
                        on_progress=lambda done, total, resumed: report(done, total, initial=resumed),
                        stamp=stamp,
                    )
                by_month[month] = _month_figures(frame)
                frames.append(frame)
    except (completions.EndpointError, servers.ServerError) as exc:
        # The months before it are written; the failing month's answers so far stay staged for the re-run.
        staged = f"answers received are kept under {paths.eval_staging_dir} and a re-run resumes"
        raise dg.Failure(f"eval_csv: {exc}; {staged}", allow_retries=False) from exc
    return by_month, frames, device, _answered_by(answerer)


def _months_below(by_month: dict[str, dict], min_parse_rate: float) -> dict[str, float]:
    """The parse rate of each month with rows below the minimum."""
    return {m: f["parse_rate"] for m, f in by_month.items() if f["rows"] and f["parse_rate"] < min_parse_rate}


def check_eval_parse_rate(
    by_month: dict[str, dict], frames: list[pd.DataFrame], settings: Settings, max_new_tokens: int
) -> dg.AssetCheckResult:
    """Each month's parse rate against eval_config's minimum; a failure says whether the generation budget cut the
    unparsed answers (counted with sft_model's tokenizer) or they ended on their own."""
    min_parse_rate = settings.eval_config.min_parse_rate
    low = _months_below(by_month, min_parse_rate)
    description = None
    if low:
        rates = ", ".join(f"{m} ({r:.0%})" for m, r in low.items())
        description = f"months below a parse rate of {min_parse_rate:.0%} (eval_config.yaml min_parse_rate): {rates}"
        unparsed = [text for frame in frames for text, ok in zip(frame["raw_output"], frame["parse_ok"]) if not ok]
        cut = evaluate.cut_at_budget(unparsed, settings.paths.sft_model, max_new_tokens, settings.sft.target_format)
        if cut:
            description += (
                f"; {cut} of {len(unparsed)} unparsed outputs were cut at the generation budget before "
                f"{settings.sft.target_format.action[1]}: evaluation.max_new_tokens {max_new_tokens} in "
                f"{profile_path(settings.profile_name, settings.config_dir)} is shorter than the answers; raise it"
            )
        elif cut is None:
            budget = f"evaluation.max_new_tokens {max_new_tokens}"
            description += f"; served from elsewhere: whether {budget} cut them is not known here"
        else:
            description += (
                "; the outputs end on their own without an action: look at sft_model (its parse_rate and losses) first"
            )
    return dg.AssetCheckResult(
        check_name=PARSE_RATE_CHECK,
        passed=not low,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "min_parse_rate": min_parse_rate,
            "parse_rate_by_month": dg.MetadataValue.json({m: f["parse_rate"] for m, f in by_month.items()}),
        },
    )


def materialize_eval_csv(
    context: dg.AssetExecutionContext, settings: Settings, config: EvalRunConfig, gpu: GpuResource
) -> dg.MaterializeResult:
    paths = settings.paths
    months = list(context.partition_keys)
    targets = [t for month in months for t in settings.artifacts_of("eval_csv", month)]
    max_new_tokens = config.max_new_tokens or settings.profile.evaluation.max_new_tokens
    # A server someone else runs answers for the model: then sft_model's files are not read here.
    served_elsewhere = bool(config.endpoint or settings.profile.evaluation.endpoint)
    inputs = [("hf_splits", None), *([] if served_elsewhere else [("sft_model", None)])]
    with writing(settings, "eval_csv", targets, inputs=inputs) as stamp:
        by_month, frames, device, answered_by = _evaluate_months(context, settings, config, gpu, months, stamp)
    min_parse_rate = settings.eval_config.min_parse_rate
    low = _months_below(by_month, min_parse_rate)
    total = sum(f["rows"] for f in by_month.values())
    check = check_eval_parse_rate(by_month, frames, settings, max_new_tokens)
    preview_columns = ["id", "true_action", "predicted_action", "forward_return", "return_status", "raw_output"]
    for month, frame in zip(months, frames):
        figures = by_month[month]
        if month not in low:
            rate_check = "passed"
        else:
            rate_check = f"FAILED: parse rate {format_share(figures['parse_rate'])} < {format_share(min_parse_rate)}"
        preview = markdown_table(frame.head(PREVIEW_ROWS).astype(str).to_dict("records"), preview_columns)
        partition_metadata(
            context,
            month,
            {
                "path": dg.MetadataValue.path(str(paths.eval_month(month))),
                "dagster/row_count": figures["rows"],
                **{name: value for name, value in figures.items() if value is not None},  # no rows: no rates
                f"check {PARSE_RATE_CHECK}": rate_check if figures["rows"] else "no rows",
                "preview": dg.MetadataValue.md(preview),
            },
        )
    window = _month_figures(pd.concat(frames, ignore_index=True))
    rates = ""
    if window["rows"]:
        rates = f", parse rate {format_share(window['parse_rate'])}, accuracy {format_share(window['accuracy'])}"
    report_summary(context, "eval_csv", f"{format_number(total)} rows{rates}")
    # What answered holds for every month of the run; each month's figures are on its own partition.
    metadata = asset_metadata(settings, "eval_csv", {"device": device, **answered_by})
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


def defs(settings: Settings) -> dg.Definitions:
    @dg.asset(
        partitions_def=month_partitions(settings.test_months),
        deps=["sft_model", "hf_splits"],
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GROUP,
        # The price source decides the forward returns: its code is part of this asset's.
        code_version=code_version("eval_csv", settings, evaluate, answers, results, price_sources),
        kinds={"pytorch", "csv"},
        check_specs=[
            dg.AssetCheckSpec(
                PARSE_RATE_CHECK,
                asset="eval_csv",
                description="Each month's share of outputs with a parsable action is at least "
                "eval_config min_parse_rate.",
            )
        ],
        description="Per month of the test window: sft_model's greedy answers to the test theses through an "
        "OpenAI-compatible server (vLLM: its CPU build for the toy, on GPU nodes for the full model; SGLang; "
        "transformers serve; or evaluation.endpoint), the parsed action and the forward return "
        "(docs/eval-and-backtest.md), one CSV a month under data/eval/ (resumable: answers staged as they come).",
        **asset_placement(COMPUTE_CLASSES["eval_csv"], settings),
    )
    def eval_csv(context: dg.AssetExecutionContext, config: EvalRunConfig, gpu: GpuResource) -> dg.MaterializeResult:
        return materialize_eval_csv(context, settings, config, gpu)

    return dg.Definitions(assets=[eval_csv])
