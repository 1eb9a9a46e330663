"""The `backtest_report` asset (every eval_csv month at once), its `backtest_sanity` check and, on the toy corpus,
`planted_cue_recovered`: the signal planted in the sample theses must come through the whole chain."""

import json
from pathlib import Path

import dagster as dg

from sftc_assets.backtest import portfolio, report, uncertainty
from sftc_assets.evaluation import results
from sftc_core import metrics as figure_definitions
from sftc_core.settings import Settings
from sftc_core.text import markdown_table
from sftc_platform import prices as price_sources
from sftc_platform.metadata import asset_metadata, code_version, image_markdown, report_summary
from sftc_platform.routing import asset_placement
from sftc_platform.writes import data_version, writing

GROUP = "backtest"


def _summary(figures: dict) -> str:
    """`accuracy 28.9% (95% CI 21.1% to 36.7%, majority 27.3%), Sharpe 1.56, return 8.52% (benchmark -6.6%);
    no evidence of skill`."""
    pf, bm = figures["portfolio"], figures["benchmark"]
    return (
        f"accuracy {report.fmt('accuracy', figures['accuracy'])} "
        f"(95% CI {report.interval_text('accuracy', figures['ci95'].get('accuracy'))}, "
        f"majority {report.fmt('accuracy', figures['majority_baseline_accuracy'])}), "
        f"Sharpe {report.fmt('sharpe', pf.get('sharpe'))}, "
        f"return {report.fmt('cumulative_return', pf.get('cumulative_return'))} "
        f"(benchmark {report.fmt('cumulative_return', bm.get('cumulative_return'))}); "
        + ("evidence of skill" if figures["verdict"]["skill"] else "no evidence of skill")
    )


def _partition_files(settings: Settings) -> tuple[list[Path], list[str]]:
    """The eval CSVs of the test window's months that exist, and the months that have none yet."""
    paths, months = settings.paths, settings.test_months
    present = [m for m in months if paths.eval_month(m).is_file()]
    return [paths.eval_month(m) for m in present], [m for m in months if m not in present]


def _plants_cue(settings: Settings) -> bool:
    """The toy corpus plants a desk note in some theses: the test split's support points say which."""
    corpus = settings.profile.corpus
    return corpus.source == "sample" and corpus.cue_share > 0


def materialize_backtest_report(context: dg.AssetExecutionContext, settings: Settings) -> dg.MaterializeResult:
    paths, planted = settings.paths, _plants_cue(settings)
    files, months_missing = _partition_files(settings)
    if months_missing:
        missing = ", ".join(months_missing)
        context.log.warning("eval_csv has no file yet for %s; the report covers the other months", missing)
    if not files:
        raise dg.Failure(f"no eval_csv month under {paths.eval_dir}; materialize eval_csv first", allow_retries=False)
    present = [m for m in settings.test_months if m not in months_missing]
    inputs = [("eval_csv", present), *([("hf_splits", None)] if planted else [])]
    with writing(settings, "backtest_report", [paths.backtest], inputs=inputs) as stamp:
        cues = report.test_split_cues(paths.hf_splits) if planted else None
        source = price_sources.price_source_from_settings(settings)
        unseen_from = report.first_unseen(settings.profile, settings.prices.calendar)
        sample_corpus = settings.profile.corpus.source == "sample"
        figures = report.run_backtest(
            files,
            paths.backtest,
            source,
            settings.backtest,
            settings.prices.calendar,
            stamp,
            sample_corpus=sample_corpus,
            cues=cues,
            unseen_from=unseen_from,
        )
    pf, bm, baselines = figures["portfolio"], figures["benchmark"], figures["baselines"]
    report_summary(context, "backtest_report", _summary(figures))
    headline = {name: figures[name] for name in report.HEADLINE}
    series = {f"portfolio_{k}": pf.get(k) for k in ("cumulative_return", "sharpe", "max_drawdown", "turnover")}
    series |= {f"benchmark_{k}": bm.get(k) for k in ("cumulative_return", "sharpe", "max_drawdown")}
    baseline_figures = ("directional_accuracy", "sharpe", "cumulative_return")
    series |= {f"{side}_{k}": baselines[side].get(k) for side in report.BASELINE_BOOKS for k in baseline_figures}
    intervals = {f"{name}_ci95": report.interval_text(name, interval) for name, interval in figures["ci95"].items()}
    p_values = {f"p_value_{name}": value for name, value in figures["p_values"].items()}
    per_month = [{k: report.fmt(k, v) if k != "month" else v for k, v in m.items()} for m in figures["per_month"]]
    return dg.MaterializeResult(
        metadata=asset_metadata(
            settings,
            "backtest_report",
            {
                "path": dg.MetadataValue.path(str(paths.backtest)),
                "rows": figures["rows"],
                "months": len(figures["per_month"]),
                "months_missing": ", ".join(months_missing) or "none",
                "window": f"{figures['first_as_of_date']}..{figures['last_as_of_date']}",
                "horizon_sessions": ", ".join(str(h) for h in figures["horizon_days"]),
                "verdict": figures["verdict"]["sentence"],
                "evidence_of_skill": figures["verdict"]["skill"],
                **{k: v for k, v in {**headline, **series, **p_values}.items() if v is not None},
                **intervals,
                "interval_methods": report.methods_text(figures["ci95_methods"]),
                "p_value_methods": report.methods_text(figures["p_value_methods"]),
                "annualised_from_sessions": figures["annualised_from_sessions"] or 0,
                **(cue_metadata(figures["planted_cue"]) if planted else {}),
                "portfolio_positions": pf["positions"],
                "portfolio_missing_positions": pf["missing_positions"],
                "per_month": dg.MetadataValue.md(markdown_table(per_month)),
                "equity_curve": image_markdown(paths.backtest / "equity_curve.png", "equity curve"),
                "confusion": image_markdown(paths.backtest / "confusion.png", "confusion matrix"),
                "report": dg.MetadataValue.path(str(paths.backtest / "report.html")),
                "daily_returns": dg.MetadataValue.path(str(paths.backtest / "daily_returns.csv")),
            },
        ),
        data_version=data_version([paths.backtest]),
    )


def check_backtest_sanity(backtest_dir: Path, files: list[Path]) -> dg.AssetCheckResult:
    """The report under `backtest_dir` against the eval CSVs `files` it was written from."""
    expected = len(results.read_eval_csv(files, raw_output=False)) if files else None
    problems = report.sanity_problems(backtest_dir, expected)
    metadata = {"problem_count": len(problems), "problems": dg.MetadataValue.json(problems)}
    return dg.AssetCheckResult(passed=not problems, metadata=metadata)


def check_planted_cue_recovered(backtest_dir: Path) -> dg.AssetCheckResult:
    path = backtest_dir / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if "planted_cue" not in metrics:
        missing = f"{path} has no planted_cue figures: materialize backtest_report"
        return dg.AssetCheckResult(passed=False, description=missing)
    cue = metrics["planted_cue"]  # its verdict was reached when the report was written
    metadata = cue_metadata(metrics["planted_cue"]) | {"p_value_accuracy": metrics["p_values"]["accuracy"] or 1.0}
    return dg.AssetCheckResult(
        passed=cue["recovered"], severity=dg.AssetCheckSeverity.ERROR, description=cue["verdict"], metadata=metadata
    )


def defs(settings: Settings) -> dg.Definitions:
    paths = settings.paths
    planted = _plants_cue(settings)

    @dg.asset(
        deps=[dg.AssetDep("eval_csv", partition_mapping=dg.AllPartitionMapping()), *(["hf_splits"] if planted else [])],
        group_name=GROUP,
        code_version=code_version(
            "backtest_report", settings, portfolio, report, uncertainty, figure_definitions, price_sources
        ),
        kinds={"pandas", "html"},
        description="Classification, signal and portfolio figures over the whole test window (every eval_csv month) "
        "with 95% intervals (multinomial, row bootstrap or Fisher z; the Sharpe ratio's from a stationary block "
        "bootstrap of the daily book), permutation p-values, the trivial baselines and a per-month table: "
        "metrics.json, daily_returns.csv (the daily book), report.md, report.html, equity_curve.png, confusion.png "
        "under data/backtest/.",
        **asset_placement("cpu", settings),
    )
    def backtest_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return materialize_backtest_report(context, settings)

    @dg.asset_check(
        asset=backtest_report,
        description="The six report files exist, figures lie in their ranges, counts add up to the eval rows.",
    )
    def backtest_sanity() -> dg.AssetCheckResult:
        return check_backtest_sanity(paths.backtest, _partition_files(settings)[0])

    # Not blocking: its only downstream asset is validation_report, which must run to say NO (a blocked run of
    # `sftc run` would leave the previous report, and its YES, in place).
    @dg.asset_check(
        asset=backtest_report,
        description="The toy model recovered the cue planted in the sample theses: accuracy on the cued test theses "
        "with its 95% interval above their majority baseline, and the accuracy's permutation p-value "
        f"below {report.CUE_P_VALUE:g}.",
    )
    def planted_cue_recovered() -> dg.AssetCheckResult:
        return check_planted_cue_recovered(paths.backtest)

    return dg.Definitions(
        assets=[backtest_report], asset_checks=[backtest_sanity, *([planted_cue_recovered] if planted else [])]
    )


def cue_metadata(cue: dict) -> dict:
    """The planted-cue figures as metadata: cued and uncued accuracy with their intervals and baselines."""
    metadata = {"cued_rows": cue["cued_rows"], "uncued_rows": cue["uncued_rows"]}
    for key in ("cue_agrees_with_label", "follows_cue"):
        if cue[key] is not None:
            metadata[key] = round(cue[key], 4)
    for subset in ("cued", "uncued"):
        figures = cue[subset]
        metadata[f"{subset}_accuracy"] = report.fmt("accuracy", figures["accuracy"])
        metadata[f"{subset}_accuracy_ci95"] = report.interval_text("accuracy", figures["ci95"])
        metadata[f"{subset}_majority_baseline"] = report.fmt("accuracy", figures["majority_baseline_accuracy"])
    return metadata
