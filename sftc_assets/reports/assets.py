"""`validation_report`: what the latest CPU validation (or, outside one, the latest materializations) did
to each stage of the toy chain, read from the Dagster instance, and the GPU plan of the full profile checked
against this data directory's NeMo JSONL, written as Markdown beside a JSON twin."""

import datetime as dt
import json
from pathlib import Path

import dagster as dg

from sftc_assets.reports import validation
from sftc_assets.training import estimate as gpu_estimate
from sftc_assets.training import gpu_plan
from sftc_core.checks import WARN, failures
from sftc_core.manifest import git_state
from sftc_core.settings import Settings
from sftc_platform import run_history
from sftc_platform.launchers import plan_checks
from sftc_platform.launchers.slurm import slurm_available
from sftc_platform.metadata import asset_metadata, code_version, report_summary
from sftc_platform.routing import ASSETS_TAG, VALIDATION_RUN_TAG, asset_placement
from sftc_platform.writes import input_problems, writing

GROUP = "reports"
# Manifest keys every asset carries: they belong in the report's environment, not in each stage's figures.
_NOT_FIGURES = {"git_commit", "git_dirty", "config_hash", "run_manifest", "preview"}
_MAX_TEXT_FIGURE = 120


def _figures(metadata: dict) -> dict:
    """The scalar figures of a materialization (counts, rates, paths, short text)."""
    figures = {}
    for name, value in metadata.items():
        if name in _NOT_FIGURES or (name.startswith("dagster/") and name != "dagster/row_count"):
            continue
        if isinstance(value, (dg.IntMetadataValue, dg.FloatMetadataValue, dg.BoolMetadataValue, dg.PathMetadataValue)):
            figures[name.removeprefix("dagster/")] = value.value
        elif isinstance(value, dg.TextMetadataValue) and len(value.value) <= _MAX_TEXT_FIGURE:
            figures[name] = value.value
    return figures


def _window_figures(materializations: list[dg.EventLogRecord]) -> dict:
    """The figures of a stage over every partition: each partition's latest materialization (newest first in
    `materializations`), counts summed, other figures kept where every partition agrees."""
    latest: dict[str | None, dict] = {}
    for record in materializations:
        latest.setdefault(record.partition_key, _figures(dict(record.asset_materialization.metadata)))
    if len(latest) <= 1:
        return next(iter(latest.values()), {})
    parts = list(latest.values())
    figures = {}
    for name in dict.fromkeys(name for part in parts for name in part):
        values = [part.get(name) for part in parts]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            figures[name] = sum(values)
        elif all(v == values[0] for v in values):
            figures[name] = values[0]
    return figures


def _checks(evaluations: list) -> list[validation.CheckOutcome]:
    """One outcome per check; a check evaluated per partition passes when every partition passed."""
    by_name: dict[str, list] = {}
    for evaluation in evaluations:
        by_name.setdefault(evaluation.check_name, []).append(evaluation)
    outcomes = []
    for name, evals in sorted(by_name.items()):
        failed = [e for e in evals if not e.passed]
        detail = (
            f"{len(evals) - len(failed)}/{len(evals)} evaluations passed"
            if len(evals) > 1
            else (evals[0].description or "")
        )
        severity = failed[0].severity.value if failed else evals[0].severity.value
        outcomes.append(validation.CheckOutcome(name=name, passed=not failed, severity=severity, description=detail))
    return outcomes


def _materializations(
    instance: dg.DagsterInstance, key: dg.AssetKey, runs: list[dg.RunRecord]
) -> list[dg.EventLogRecord]:
    """The asset's materializations in `runs`, newest first (public queries: the records after the first run began)."""
    if not runs:
        return []
    run_ids = {run.dagster_run.run_id for run in runs}
    since = min(run.create_timestamp.timestamp() for run in runs) - 1
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, after_timestamp=since), limit=10_000
    ).records
    return [record for record in records if record.run_id in run_ids]


def stage_outcome(
    instance: dg.DagsterInstance, settings: Settings, asset: str, runs: list[dg.RunRecord] | None
) -> validation.StageOutcome:
    """`runs`: the runs of this validation (None: the run of the asset's latest materialization). A stage
    whose files are missing or changed since sftc wrote them fails, whatever its runs said."""
    key = dg.AssetKey(asset)
    if runs is None:
        latest = instance.get_latest_materialization_event(key)
        record = latest and instance.get_run_record_by_id(latest.run_id)
        runs = [record] if record else []
    else:
        # A run of `dg.materialize` records no asset selection: the chain names its assets in a tag.
        runs = [run for run in runs if asset in run.dagster_run.tags.get(ASSETS_TAG, "").split(",")]
    materializations = _materializations(instance, key, runs)
    evaluations, errors = [], []
    for record in runs:
        run = record.dagster_run
        evaluations += [e for e in run_history.check_evaluations(instance, run.run_id) if e.asset_key == key]
        for failure in run_history.step_failures(instance, run.run_id):
            if failure.step_key == asset or failure.step_key.startswith(
                f"{asset}_"
            ):  # the asset's step or one of its checks' steps
                errors.append(f"step {failure.step_key} failed in run {run.run_id}: {failure.message}")
        mine = [m for m in materializations if m.run_id == run.run_id]
        if run.status == dg.DagsterRunStatus.FAILURE and not mine and not errors:
            errors.append(f"run {run.run_id} failed before materializing it")
    latest = materializations[0] if materializations else None
    if len(runs) == 1 and latest is None and not errors:
        errors.append(
            f"run {runs[0].dagster_run.run_id} ended {runs[0].dagster_run.status.value} without materializing it"
        )
    partitions = sorted({m.partition_key for m in materializations if m.partition_key})
    if latest is not None:
        errors += input_problems(settings, [(asset, partitions or None)])
    return validation.StageOutcome(
        asset=asset,
        materialized=latest is not None,
        partitions=partitions,
        materialized_at=dt.datetime.fromtimestamp(latest.timestamp, dt.UTC).isoformat(timespec="seconds")
        if latest
        else None,
        run_id=latest.run_id if latest else None,
        figures=_window_figures(materializations),
        checks=_checks(evaluations),
        error="; ".join(errors) or None,
    )


def materialize_validation_report(context: dg.AssetExecutionContext, settings: Settings) -> dg.MaterializeResult:
    validation_id = context.run.tags.get(VALIDATION_RUN_TAG)
    runs = None
    if validation_id:
        this_validation = dg.RunsFilter(tags={VALIDATION_RUN_TAG: validation_id})
        runs = list(context.instance.get_run_records(filters=this_validation))
    stages = [stage_outcome(context.instance, settings, asset, runs) for asset in validation.CHAIN_STAGES]
    plan = gpu_plan.build_gpu_plan(settings, launch_checks=plan_checks.gpu_plan_launch_checks)
    estimate = gpu_estimate.gpu_run_estimate(settings, plan=plan)
    if estimate is not None and settings.profile_name == "full":  # only the full profile's runs are the GPU run
        figures = {s.asset: dict(s.figures) for s in stages}
        for asset, partitions in (("nemo_model", None), ("eval_csv", settings.test_months)):
            seconds = run_history.latest_step_seconds(context.instance, asset, partitions)
            figures.setdefault(asset, {})["step_seconds"] = seconds
        estimate = gpu_estimate.measured_from(estimate, figures, settings.cluster.node_pools.gpu.gpus)
    report = validation.build_report(
        stages,
        gpu_plan=list(plan.checks),
        environment=validation.environment_summary(settings.profile_name, settings.train_backend),
        git=git_state(),
        generated_at=dt.datetime.now(dt.UTC),
        validation_run=validation_id,
        slurm_present=slurm_available(),
        estimate=estimate.as_dict() if estimate is not None else None,
        canary=validation.canary_preconditions(stages, settings.paths.nemo_jsonl, settings.sft.target_format),
    )
    with writing(settings, "validation_report", settings.artifacts_of("validation_report")) as stamp:
        md_path, json_path = validation.write_report(report, settings.paths.reports, stamp)
    ready = "YES" if report["ready_for_gpu"] else "NO"
    context.log.info("validation report %s: ready for GPU %s", md_path, ready)
    stages_line = f"{report['passed']} stages passed, {report['failed']} failed, {report['not_run']} not run"
    warned = [check["name"] for check in report["gpu_plan"]["checks"] if check["status"] == WARN]
    stages_line += f"; GPU plan warnings: {', '.join(warned)}" if warned else ""
    report_summary(context, "validation_report", f"ready for GPU: {ready} ({stages_line})")
    if estimate:
        cost = {"gpu_run_gpu_hours": estimate.gpu_hours, "gpu_run_cost": f"{estimate.cost:,.0f} {estimate.currency}"}
    else:
        cost = {}
    return dg.MaterializeResult(
        metadata=asset_metadata(
            settings,
            "validation_report",
            {
                "path": dg.MetadataValue.path(str(md_path)),
                "json_path": dg.MetadataValue.path(str(json_path)),
                "ready_for_gpu": report["ready_for_gpu"],
                "stages_passed": report["passed"],
                "stages_failed": report["failed"],
                "stages_not_run": report["not_run"],
                "gpu_plan_passed": report["gpu_plan"]["passed"],
                "gpu_plan_failed_checks": ", ".join(c.name for c in failures(plan.checks)) or "none",
                **cost,
                "report": dg.MetadataValue.md(validation.render_markdown(report)),
            },
        )
    )


def check_ready_for_gpu_deployment(reports_dir: Path) -> dg.AssetCheckResult:
    report = json.loads((reports_dir / "validation_report.json").read_text(encoding="utf-8"))
    reasons = dg.MetadataValue.json(report["reasons"])
    return dg.AssetCheckResult(passed=bool(report["ready_for_gpu"]), metadata={"reasons": reasons})


def defs(settings: Settings) -> dg.Definitions:
    @dg.asset(
        # The GPU plan measures the NeMo JSONL against the sequence length and the answer budget (and the planted cue's
        # preconditions read it), and sizes the toy's base_checkpoint from its headers.
        deps=["backtest_report", "nemo_jsonl", "base_checkpoint"],
        group_name=GROUP,
        # The settings the GPU plan reads are in its version (SETTINGS_READ): a plan judged on other configs is
        # another report.
        code_version=code_version("validation_report", settings, validation, gpu_plan, gpu_estimate, plan_checks),
        kinds={"markdown", "json"},
        description="CPU validation report: every toy-chain stage PASS/FAIL with its checks and figures, "
        "the GPU plan of the full profile (layout, memory, host RAM, disk, data, cutoff, launch), the environment, "
        "what a CPU cannot test, and whether the GPU run is ready: YES only when both parts pass.",
        **asset_placement("cpu", settings),
    )
    def validation_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return materialize_validation_report(context, settings)

    @dg.asset_check(
        asset=validation_report,
        description="The report says the GPU run is ready: the toy chain and the GPU plan both pass.",
    )
    def ready_for_gpu_deployment() -> dg.AssetCheckResult:
        return check_ready_for_gpu_deployment(settings.paths.reports)

    return dg.Definitions(assets=[validation_report], asset_checks=[ready_for_gpu_deployment])
