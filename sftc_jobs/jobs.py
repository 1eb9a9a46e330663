"""The `cpu_validation` job: the toy chain end to end on a CPU node, then the validation report.

An asset job cannot hold it: Dagster 1.13 refuses an asset job whose assets have different partitions
definitions ("Selected assets must have the same partitions definitions"), and the chain has three
(monthly theses, unpartitioned middle, test-window months of `eval_csv`); a schedule cannot launch a
backfill either (only sensors can). So the job is one op that drives the chain through the instance
with `materialize_chain`: ordered runs of the code location's assets, each tagged with the node
class and `sftc/validation_run=<this run's id>`, every asset and partition forced (a validation
proves the code works today, not that nothing changed). Whatever fails, `validation_report` is
materialized last, reads what this validation did, and says PASS/FAIL per stage.
"""

import logging

import dagster as dg

from sftc_assets.training.assets import LAUNCHER_TAG, NODES_TAG, PROCS_TAG
from sftc_core.settings import Settings
from sftc_jobs.chain import ALL_PARTITIONS, Chain, materialize_chain, toposorted_keys
from sftc_platform.launchers.slurm import slurm_available
from sftc_platform.routing import VALIDATION_RUN_TAG, launched_run_tags

VALIDATION_REPORT = dg.AssetKey("validation_report")
# The NeMo import needs NeMo and GPUs: the one asset a CPU validation leaves out.
GPU_ONLY_ASSETS = (dg.AssetKey("nemo_model"),)


def chain_keys(chain: Chain, *, include_nemo: bool = False) -> list[dg.AssetKey]:
    """Every materializable asset of the code location (the NeMo import only when asked), in dependency order."""
    assets = chain.assets
    excluded = set() if include_nemo else set(GPU_ONLY_ASSETS)
    return toposorted_keys(assets, set(assets) - excluded)


def nightly_launch_tags(settings: Settings) -> dict[str, str]:
    """Where Slurm answers, the validation's fine-tune is a multi-node Slurm job (the profile's launch.nightly_slurm):
    the launch path of the real fine-tune, proven on CPU. Without Slurm, the profile's launcher
    (the report says which)."""
    nightly = settings.profile.launch.nightly_slurm
    if nightly is None or not slurm_available():
        return {}
    return {LAUNCHER_TAG: "slurm", NODES_TAG: str(nightly.nodes), PROCS_TAG: str(nightly.procs_per_node)}


def run_validation(chain: Chain, instance: dg.DagsterInstance, validation_id: str, log) -> bool:
    """Force the whole toy chain, then always the report; True when every run succeeded."""
    keys = [key for key in chain_keys(chain) if key != VALIDATION_REPORT]
    tags = {VALIDATION_RUN_TAG: validation_id, **nightly_launch_tags(chain.settings)}
    result = materialize_chain(chain, instance, keys, forced={key: ALL_PARTITIONS for key in keys}, tags=tags, log=log)
    report = materialize_chain(
        chain, instance, [VALIDATION_REPORT], forced={VALIDATION_REPORT: ALL_PARTITIONS}, tags=tags, log=log
    )
    for failed in filter(None, (result.failed_run, report.failed_run)):
        (log or logging.getLogger(__name__)).error("%s\n  run %s", failed.failure, failed.run_id)
    return result.success and report.success


def cpu_validation_job(chain: Chain) -> dg.JobDefinition:
    """The job over `chain`: the op closes over the code location's own assets, nothing is imported again."""
    settings = chain.settings
    cpu = launched_run_tags("cpu", settings)

    @dg.op(
        tags=cpu, description="Materializes the toy chain (all but nemo_model) with its checks, then validation_report."
    )
    def validate_toy_chain(context: dg.OpExecutionContext) -> None:
        if settings.profile_name != "toy":
            raise dg.Failure(
                "cpu_validation validates the toy profile, "
                f"but this code location runs SFTC_PROFILE={settings.profile_name}: "
                "run it from a code location with SFTC_PROFILE=toy (see deploy/README.md)"
            )
        if not run_validation(chain, context.instance, context.run_id, context.log):
            report = settings.paths.reports / "validation_report.md"
            raise dg.Failure(
                f"the toy chain did not pass: see {report} and the runs tagged {VALIDATION_RUN_TAG}={context.run_id}"
            )

    @dg.job(
        name="cpu_validation",
        tags=cpu,
        description="Nightly CPU validation of the toy chain and its checks, ending with validation_report.",
    )
    def cpu_validation() -> None:
        validate_toy_chain()

    return cpu_validation
