"""The NeMo backend as Dagster sees it: the `nemo_model` asset and the fine-tune the `sft_model` asset runs for
backend nemo, both launched in the NeMo environment through Dagster Pipes.

`launcher: subprocess` in configs/nemo/finetune.yaml runs nemo_entry with the NeMo interpreter on this node
(resource "pipes_subprocess_client"), after the GPU gate (resource "gpu") has checked the node. `launcher: k8s`
starts one pod from the NeMo image on the GPU node pool with dagster-k8s's PipesK8sClient instead; there the
pod's GPU request is the gate (Kubernetes schedules it only where the GPUs are). See deploy/nemo-k8s.md.
"""

import json
from pathlib import Path

import dagster as dg

from sftc_assets.common.asset_helpers import code_version, manifest_metadata
from sftc_assets.training import nemo_config, nemo_entry, nemo_runner
from sftc_assets.training.nemo_config import FINETUNE_CONFIG_PATH, FinetuneConfig, load_finetune_config
from sftc_assets.training.nemo_runner import EntryStep
from sftc_resources.resources import GpuResource
from sftc_resources.paths import ArtifactPaths
from sftc_resources.resources import ProjectResource
from sftc_resources.routing import asset_placement
from sftc_resources.settings import PROJECT_ROOT, load_settings

_PROFILE = load_settings().profile_name
CONFIG_FILES = ("nemo/finetune.yaml",)
# The NeMo import builds the model through Megatron on one device.
IMPORT_GPUS = 1


class NemoRunConfig(dg.Config):
    dry_run: bool = False
    """Check the inputs and plan the NeMo run (in the materialization's metadata) without importing NeMo or writing files."""


def _plan_from(invocation: dg.PipesClientCompletedInvocation) -> dict | None:
    plans = [m["plan"] for m in invocation.get_custom_messages() if isinstance(m, dict) and m.get("kind") == "plan"]
    return plans[-1] if plans else None


def launch(
    context: dg.AssetExecutionContext,
    pipes_client: dg.PipesSubprocessClient,
    config: FinetuneConfig,
    step: EntryStep,
    gpus: int,
) -> dg.PipesClientCompletedInvocation:
    """Run one nemo_entry step through Pipes with the configured launcher."""
    extras = {"step": step.name}
    if config.launcher == "k8s":
        from dagster_k8s import PipesK8sClient

        return PipesK8sClient().run(
            context=context,
            image=config.k8s.image,
            command=nemo_runner.k8s_argv(step),
            namespace=config.k8s.namespace,
            env=nemo_runner.entry_env("/app"),
            base_pod_spec=nemo_runner.k8s_pod_spec(config, gpus),
            extras=extras,
        )
    return pipes_client.run(context=context, command=step.argv, env=nemo_runner.entry_env(), cwd=str(PROJECT_ROOT), extras=extras)


def _gate(gpu: GpuResource, config: FinetuneConfig, asset: str, count: int) -> None:
    """Fails at once, before any work, on a node without the GPUs (subprocess launcher: the work runs here)."""
    if config.launcher == "subprocess":
        gpu.require_gpus(asset, count, config.gpu_memory_bytes)


def _python(config: FinetuneConfig) -> Path:
    # In the NeMo image the interpreter is `python` on PATH (k8s_argv); locally it must exist.
    return nemo_runner.require_interpreter(nemo_runner.nemo_python(config)) if config.launcher == "subprocess" else Path("python")


def _require_plan(plan: dict | None) -> dict:
    if plan is None:
        raise dg.Failure("the NeMo entry's dry run reported no plan through Pipes; see its log above")
    return plan


@dg.asset(
    deps=["bf16_checkpoint"],
    code_version=code_version(nemo_config, nemo_entry, nemo_runner),
    kinds={"nvidia", "pytorch"},
    description="The BF16 checkpoint imported into NeMo (llm.import_ckpt), run in the NeMo environment through Dagster Pipes.",
    **asset_placement("gpu", _PROFILE),
)
def nemo_model(
    context: dg.AssetExecutionContext,
    config: NemoRunConfig,
    project: ProjectResource,
    gpu: GpuResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    finetune = load_finetune_config()
    _gate(gpu, finetune, "nemo_model", IMPORT_GPUS)
    paths = project.paths()
    step = nemo_runner.import_step(_python(finetune), paths.bf16_checkpoint, paths.nemo_model, dry_run=config.dry_run)
    invocation = launch(context, pipes_subprocess_client, finetune, step, IMPORT_GPUS)
    if config.dry_run:
        # Pipes makes a materialization mandatory; this one says plainly that nothing was written.
        plan = _require_plan(_plan_from(invocation))
        return dg.MaterializeResult(
            metadata={"dry_run": True, "planned": dg.MetadataValue.json(plan), "written": "nothing (dry run)", **manifest_metadata(*CONFIG_FILES)}
        )
    reported = invocation.get_materialize_result()
    return dg.MaterializeResult(
        metadata={
            **(reported.metadata or {}),
            "dry_run": False,
            "path": dg.MetadataValue.path(str(paths.nemo_model)),
            "source": dg.MetadataValue.path(str(paths.bf16_checkpoint)),
            **manifest_metadata(*CONFIG_FILES),
        }
    )


def run_nemo_finetune_via_pipes(
    context: dg.AssetExecutionContext,
    pipes_client: dg.PipesSubprocessClient,
    gpu: GpuResource,
    paths: ArtifactPaths,
    *,
    config_path: Path | str | None = None,
    max_steps: int | None = None,
    smoke_test: bool = False,
    dry_run: bool = False,
) -> dict:
    """The `sft_model` asset's nemo branch: gate, fine-tune, merge, export to `paths.sft_model` through Pipes.

    Returns metrics.json (the same loss keys as the hf backend: steps, initial/final/best_val_loss, best_val_step,
    final_train_loss, tokens_per_s); on a dry run, the planned recipe instead and nothing is written.
    loss_curve.png, training.csv and val.csv lie beside the HF weights in `paths.sft_model`.
    """
    config_path = config_path or FINETUNE_CONFIG_PATH
    config = nemo_runner.load_run_config(config_path, max_steps, smoke_test, dry_run)
    _gate(gpu, config, "sft_model", config.gpus_per_node)

    def execute(step: EntryStep) -> dict | None:
        invocation = launch(context, pipes_client, config, step, config.gpus_per_node)
        return _plan_from(invocation) if step.argv[-1] == "--dry-run" else None

    result = nemo_runner.nemo_finetune(
        execute, _python(config), config, paths.bf16_checkpoint, paths.nemo_model, paths.nemo_jsonl, paths.sft_model, config_path, dry_run
    )
    if dry_run:
        return _require_plan(result)
    context.log.info("nemo fine-tune: %s", json.dumps({k: result.get(k) for k in ("steps", "final_val_loss", "best_val_loss")}))
    return result
