"""`validation_report`: what the latest CPU validation (or, outside one, the latest materializations) did
to each stage of the toy chain, read from the Dagster instance, written as Markdown beside a JSON twin."""

import datetime as dt
import json

import dagster as dg

from sftc_assets.common.asset_helpers import code_version, manifest_metadata
from sftc_assets.common.manifest import git_state
from sftc_assets.reports import validation
from sftc_resources.resources import ProjectResource
from sftc_resources.routing import asset_placement
from sftc_resources.settings import load_settings

_PROFILE = load_settings().profile_name
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


def _run_events(instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType) -> list:
    return [record.event_log_entry for record in instance.get_records_for_run(run_id, of_type=event_type).records]


def _root_cause(error) -> str:
    """The user's exception message, not Dagster's "error occurred while executing" wrapper."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def _checks(evaluations: list) -> list[validation.CheckOutcome]:
    """One outcome per check; a check evaluated per partition passes when every partition passed."""
    by_name: dict[str, list] = {}
    for evaluation in evaluations:
        by_name.setdefault(evaluation.check_name, []).append(evaluation)
    outcomes = []
    for name, evals in sorted(by_name.items()):
        failed = [e for e in evals if not e.passed]
        detail = f"{len(evals) - len(failed)}/{len(evals)} evaluations passed" if len(evals) > 1 else (evals[0].description or "")
        severity = failed[0].severity.value if failed else evals[0].severity.value
        outcomes.append(validation.CheckOutcome(name=name, passed=not failed, severity=severity, description=detail))
    return outcomes


def stage_outcome(instance: dg.DagsterInstance, asset: str, runs: list[dg.DagsterRun] | None) -> validation.StageOutcome:
    """`runs`: the runs of this validation (None: the run of the asset's latest materialization)."""
    key = dg.AssetKey(asset)
    if runs is None:
        latest = instance.get_latest_materialization_event(key)
        runs = [run for run in [latest and instance.get_run_by_id(latest.run_id)] if run]
    else:
        runs = [run for run in runs if run.asset_selection and key in run.asset_selection]
    materializations, evaluations, errors = [], [], []
    for run in runs:
        mats = [e for e in _run_events(instance, run.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION) if e.asset_materialization.asset_key == key]
        materializations += mats
        evaluations += [
            e.dagster_event.event_specific_data
            for e in _run_events(instance, run.run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
            if e.dagster_event.event_specific_data.asset_key == key
        ]
        for failure in _run_events(instance, run.run_id, dg.DagsterEventType.STEP_FAILURE):
            step = failure.dagster_event.step_key or ""
            if step == asset or step.startswith(f"{asset}_"):  # the asset's step or one of its checks' steps
                errors.append(f"step {step} failed in run {run.run_id}: {_root_cause(failure.dagster_event.event_specific_data.error)}")
        if run.status == dg.DagsterRunStatus.FAILURE and not mats and not errors:
            errors.append(f"run {run.run_id} failed before materializing it")
    latest = max(materializations, key=lambda e: e.timestamp, default=None)
    if runs and len(runs) == 1 and latest is None and not errors:
        errors.append(f"run {runs[0].run_id} ended {runs[0].status.value} without materializing it")
    partitions = sorted({e.asset_materialization.partition for e in materializations if e.asset_materialization.partition})
    return validation.StageOutcome(
        asset=asset,
        materialized=latest is not None,
        partitions=partitions,
        materialized_at=dt.datetime.fromtimestamp(latest.timestamp, dt.timezone.utc).isoformat(timespec="seconds") if latest else None,
        run_id=latest.run_id if latest else None,
        figures=_figures(dict(latest.asset_materialization.metadata)) if latest else {},
        checks=_checks(evaluations),
        error="; ".join(errors) or None,
    )


@dg.asset(
    deps=["backtest_report"],
    code_version=code_version(validation),
    kinds={"markdown", "json"},
    description="CPU validation report: every toy-chain stage PASS/FAIL with its checks and figures, the environment, "
    "what a CPU cannot test, and whether the chain is ready for GPU deployment.",
    **asset_placement("cpu", _PROFILE),
)
def validation_report(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
    settings, paths = project.settings(), project.paths()
    validation_id = context.run.tags.get(validation.VALIDATION_RUN_TAG)
    runs = list(context.instance.get_runs(filters=dg.RunsFilter(tags={validation.VALIDATION_RUN_TAG: validation_id}))) if validation_id else None
    stages = [stage_outcome(context.instance, asset, runs) for asset in validation.CHAIN_STAGES]
    report = validation.build_report(
        stages,
        environment=validation.environment_summary(settings.profile_name, settings.train_backend),
        git=git_state(),
        generated_at=dt.datetime.now(dt.timezone.utc),
        validation_run=validation_id,
    )
    md_path, json_path = validation.write_report(report, paths.reports)
    context.log.info("validation report %s: ready for GPU %s", md_path, "YES" if report["ready_for_gpu"] else "NO")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(md_path)),
            "json_path": dg.MetadataValue.path(str(json_path)),
            "ready_for_gpu": report["ready_for_gpu"],
            "stages_passed": report["passed"],
            "stages_failed": report["failed"],
            "stages_not_run": report["not_run"],
            "report": dg.MetadataValue.md(validation.render_markdown(report)),
            **manifest_metadata(),
        }
    )


@dg.asset_check(asset=validation_report, description="The report says the toy chain is ready for GPU deployment.")
def ready_for_gpu_deployment(project: ProjectResource) -> dg.AssetCheckResult:
    report = json.loads((project.paths().reports / "validation_report.json").read_text(encoding="utf-8"))
    return dg.AssetCheckResult(passed=bool(report["ready_for_gpu"]), metadata={"reasons": dg.MetadataValue.json(report["reasons"])})
