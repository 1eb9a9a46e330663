"""How Dagster starts a nemo_entry step: `launcher: subprocess` runs it with the NeMo interpreter on this node
(resource "pipes_subprocess_client"); `launcher: k8s` starts one pod from the NeMo image on the GPU node pool
with dagster-k8s's PipesK8sClient, whose GPU request is the gate there. Both speak Dagster Pipes.
See deploy/nemo-k8s.md.
"""

from __future__ import annotations

import dagster as dg

from sftc_assets.training.nemo_runner import EntryStep, entry_env
from sftc_core.configs import PROJECT_ROOT, ConfigError
from sftc_core.settings import Settings
from sftc_resources.routing import GPU_RESOURCE, k8s_config


def k8s_pod_spec(settings: Settings, gpus: int) -> dict:
    """The base pod spec for PipesK8sClient: the GPU node pool of configs/cluster.yaml (node selector,
    tolerations, CPU/memory), `gpus` nvidia.com/gpu, the data volume and a large /dev/shm."""
    launch = settings.finetune.k8s
    if launch is None:
        raise ConfigError(f"{settings.finetune.source}: launcher k8s needs the k8s: section")
    pool = k8s_config("gpu", settings.cluster)
    resources = pool["container_config"]["resources"]
    # Kubernetes requires extended resources such as GPUs to have request == limit.
    limits = {**resources["limits"], GPU_RESOURCE: str(gpus)}
    requests = {**resources["requests"], GPU_RESOURCE: str(gpus)}
    return {
        "node_selector": pool["pod_spec_config"]["node_selector"],
        "tolerations": pool["pod_spec_config"]["tolerations"],
        "restart_policy": "Never",
        "volumes": [
            {"name": "data", "persistent_volume_claim": {"claim_name": launch.data_volume_claim}},
            {"name": "dshm", "empty_dir": {"medium": "Memory", "size_limit": launch.shm_size}},
        ],
        "containers": [
            {
                "name": "nemo",
                "working_dir": "/app",
                "resources": {"limits": limits, "requests": requests},
                "volume_mounts": [
                    {"name": "data", "mount_path": launch.data_mount_path},
                    {"name": "dshm", "mount_path": "/dev/shm"},
                ],
            }
        ],
    }


def k8s_argv(step: EntryStep) -> list[str]:
    """The step's command inside the NeMo image, whose interpreter is `python` on PATH."""
    return ["python", *step.argv[1:]]


def launch_step(
    context: dg.AssetExecutionContext, pipes_client: dg.PipesSubprocessClient, settings: Settings, step: EntryStep, gpus: int
) -> dg.PipesClientCompletedInvocation:
    """Run one nemo_entry step through Pipes with the configured launcher."""
    extras = {"step": step.name}
    if settings.finetune.launcher == "k8s":
        from dagster_k8s import (
            PipesK8sClient,  # needs the kubernetes client: only imported where it is used
        )

        return PipesK8sClient().run(
            context=context,
            image=settings.finetune.k8s.image,
            command=k8s_argv(step),
            namespace=settings.finetune.k8s.namespace,
            env=entry_env("/app"),
            base_pod_spec=k8s_pod_spec(settings, gpus),
            extras=extras,
        )
    return pipes_client.run(context=context, command=step.argv, env=entry_env(), cwd=str(PROJECT_ROOT), extras=extras)
