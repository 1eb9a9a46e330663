"""The `backtest_report` asset (every eval_csv month at once) and its `backtest_sanity` check."""

import dagster as dg

from sftc_assets.backtest import portfolio, report
from sftc_assets.evaluation import results
from sftc_core.settings import Settings
from sftc_core.text import markdown_table
from sftc_resources import prices as price_sources
from sftc_resources.metadata import code_version, image_markdown, manifest_metadata
from sftc_resources.routing import asset_placement
from sftc_resources.writes import data_version, writing

GROUP = "evaluation"


def defs(settings: Settings) -> dg.Definitions:
    paths = settings.paths

    def partition_files() -> tuple[list, list[str]]:
        """The eval CSVs of the test window's months that exist, and the months that have none yet."""
        months = settings.test_months
        return [paths.eval_month(m) for m in months if paths.eval_month(m).is_file()], [m for m in months if not paths.eval_month(m).is_file()]

    @dg.asset(
        deps=[dg.AssetDep("eval_csv", partition_mapping=dg.AllPartitionMapping())],
        group_name=GROUP,
        code_version=code_version("backtest_report", settings, portfolio, report, price_sources),
        kinds={"pandas", "html"},
        description="Classification, signal and portfolio figures over the whole test window (every eval_csv month), with a "
        "per-month table: metrics.json, report.md, report.html, equity_curve.png, confusion.png under data/backtest/.",
        **asset_placement("cpu", settings),
    )
    def backtest_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        files, months_missing = partition_files()
        if months_missing:
            context.log.warning("eval_csv has no file yet for %s; the report covers the other months", ", ".join(months_missing))
        if not files:
            raise dg.Failure(f"no eval_csv month under {paths.eval_dir}; materialize eval_csv first", allow_retries=False)
        present = [m for m in settings.test_months if m not in months_missing]
        with writing(settings, "backtest_report", [paths.backtest], inputs=[("eval_csv", present)]) as stamp:
            source = price_sources.price_source_from_settings(settings)
            figures = report.run_backtest(files, paths.backtest, source, settings.backtest, settings.prices.calendar, stamp)
        pf, bm = figures["portfolio"], figures["benchmark"]
        headline = {name: figures[name] for name in report.HEADLINE}
        series = {f"portfolio_{k}": pf.get(k) for k in ("cumulative_return", "sharpe", "max_drawdown", "turnover")}
        series |= {f"benchmark_{k}": bm.get(k) for k in ("cumulative_return", "sharpe", "max_drawdown")}
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(paths.backtest)),
                "rows": figures["rows"],
                "months": len(figures["per_month"]),
                "months_missing": ", ".join(months_missing) or "none",
                "window": f"{figures['first_as_of_date']}..{figures['last_as_of_date']}",
                **{k: v for k, v in {**headline, **series}.items() if v is not None},
                "portfolio_positions": pf["positions"],
                "portfolio_missing_positions": pf["missing_positions"],
                "per_month": dg.MetadataValue.md(markdown_table([{k: report.fmt(k, v) if k != "month" else v for k, v in m.items()} for m in figures["per_month"]])),
                "equity_curve": image_markdown(paths.backtest / "equity_curve.png", "equity curve"),
                "confusion": image_markdown(paths.backtest / "confusion.png", "confusion matrix"),
                "report": dg.MetadataValue.path(str(paths.backtest / "report.html")),
                **manifest_metadata(settings, "backtest_report"),
            },
            data_version=data_version([paths.backtest]),
        )

    @dg.asset_check(asset=backtest_report, description="The five report files exist, figures lie in their ranges, counts add up to the eval rows.")
    def backtest_sanity() -> dg.AssetCheckResult:
        files, _ = partition_files()
        expected = len(results.read_eval_csv(files)) if files else None
        problems = report.sanity_problems(paths.backtest, expected)
        return dg.AssetCheckResult(passed=not problems, metadata={"problem_count": len(problems), "problems": dg.MetadataValue.json(problems)})

    return dg.Definitions(assets=[backtest_report], asset_checks=[backtest_sanity])
