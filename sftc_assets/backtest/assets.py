"""The `backtest_report` asset (every eval_csv month at once) and its `backtest_sanity` check."""

import dagster as dg

from sftc_assets.backtest import metrics, portfolio, report
from sftc_assets.common.asset_helpers import code_version, image_markdown, manifest_metadata, markdown_table
from sftc_assets.evaluation import eval_csv as eval_logic
from sftc_jobs.partitions import test_month_partitions
from sftc_resources import prices as prices_module
from sftc_resources.resources import PriceDataResource
from sftc_resources.resources import ProjectResource
from sftc_resources.routing import asset_placement
from sftc_resources.settings import load_settings

_PROFILE = load_settings().profile_name


def _partition_files(project: ProjectResource) -> tuple[list, list[str]]:
    """The eval CSVs of the current test window's months that exist, and the months that have none yet."""
    paths = project.paths()
    months = test_month_partitions.get_partition_keys()
    return [paths.eval_month(m) for m in months if paths.eval_month(m).is_file()], [m for m in months if not paths.eval_month(m).is_file()]


@dg.asset(
    deps=[dg.AssetDep("eval_csv", partition_mapping=dg.AllPartitionMapping())],
    code_version=code_version(metrics, portfolio, report, eval_logic, prices_module),
    kinds={"pandas", "html"},
    description="Classification, signal and portfolio figures over the whole test window (every eval_csv month), with a "
    "per-month table: metrics.json, report.md, report.html, equity_curve.png, confusion.png under data/backtest/.",
    **asset_placement("cpu", _PROFILE),
)
def backtest_report(context: dg.AssetExecutionContext, project: ProjectResource, prices: PriceDataResource) -> dg.MaterializeResult:
    paths = project.paths()
    files, months_missing = _partition_files(project)
    if months_missing:
        context.log.warning("eval_csv has no file yet for %s; the report covers the other months", ", ".join(months_missing))
    if not files:
        raise dg.Failure(f"no eval_csv month under {paths.eval_dir}; materialize eval_csv first", allow_retries=False)
    config = prices.config()
    figures = report.run_backtest(files, paths.backtest, prices.source(), metrics.load_backtest_config(), config.calendar)
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
            **manifest_metadata("backtest_config.yaml", "eval_config.yaml"),
        }
    )


@dg.asset_check(asset=backtest_report, description="The five report files exist, figures lie in their ranges, counts add up to the eval rows.")
def backtest_sanity(project: ProjectResource) -> dg.AssetCheckResult:
    files, _ = _partition_files(project)
    expected = len(eval_logic.read_eval_csv(files)) if files else None
    problems = report.sanity_problems(project.paths().backtest, expected)
    return dg.AssetCheckResult(passed=not problems, metadata={"problem_count": len(problems), "problems": dg.MetadataValue.json(problems)})
