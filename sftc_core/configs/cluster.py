"""configs/cluster.yaml: node pools, Slurm, Kubernetes, storage and rates of the target cluster."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    model_validator,
)

from sftc_core.configs.base import CONFIG_DIR, ConfigError, Strict, load_yaml_model


class Toleration(Strict):
    key: str
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class ContainerResources(Strict):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


# The extended resource Kubernetes schedules GPUs by (NVIDIA's device plugin).
GPU_RESOURCE = "nvidia.com/gpu"
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
_QUANTITY_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}


def quantity_bytes(text: str) -> int:
    """A Kubernetes quantity of bytes (`512Gi`, `2Ti`, `1.5T`) as a number of bytes."""
    match = _QUANTITY.match(str(text))
    if match is None:
        raise ValueError(f"{text!r} is not a size; expected a Kubernetes quantity such as 512Gi, 2Ti or 500G")
    return int(float(match[1]) * _QUANTITY_UNITS[match[2]])


def _size(value: str) -> str:
    quantity_bytes(value)
    return value


Size = Annotated[str, AfterValidator(_size)]


class NodePool(Strict):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    resources: ContainerResources = Field(default_factory=ContainerResources)
    gpus: int = Field(default=0, ge=0)
    # Host RAM of one node of the pool (a Kubernetes quantity): the GPU plan's host-RAM check reads it.
    node_memory: Size | None = None

    @model_validator(mode="after")
    def _limit_fits_node(self) -> NodePool:
        limit = self.resources.limits.get("memory")
        if (
            limit is not None
            and self.node_memory is not None
            and quantity_bytes(limit) > quantity_bytes(self.node_memory)
        ):
            raise ValueError(
                f"resources.limits.memory {limit} exceeds node_memory {self.node_memory}: no node could give it"
            )
        return self

    @property
    def usable_memory_bytes(self) -> int | None:
        """What a step's pod may use: the node's RAM, capped by the pod's memory limit."""
        sizes = [quantity_bytes(v) for v in (self.node_memory, self.resources.limits.get("memory")) if v is not None]
        return min(sizes) if sizes else None


class NodePools(Strict):
    cpu: NodePool
    gpu: NodePool


class SlurmEnvironment(Strict):
    """One Python environment on the Slurm nodes: an interpreter path (null: the same path as on the submitting
    node, a shared filesystem) and, with pyxis/enroot, the container image it lives in."""

    python: str | None = None
    container_image: str | None = None


class SlurmConfig(Strict):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    # Exported into every task: a cluster's NCCL settings, proxies, module paths.
    env: dict[str, str] = Field(default_factory=dict)
    # Shell lines run before srun on the first node (module load ..., source ...).
    setup: list[str] = Field(default_factory=list)
    # More #SBATCH directives, as sbatch's long options (e.g. "--exclusive", "--mem=0").
    sbatch_options: list[str] = Field(default_factory=list)
    # pyxis: host:container mounts; the data directory must be at the same path inside.
    container_mounts: list[str] = Field(default_factory=list)
    environments: dict[Literal["sftc", "nemo"], SlurmEnvironment] = Field(default_factory=dict)
    cpus_per_task: int | None = Field(default=None, ge=1)
    # The c10d rendezvous port on the first node is this plus the job id modulo 1000 (two jobs on a node do not clash).
    rendezvous_base_port: int = Field(default=29500, ge=1024, le=64000)
    poll_seconds: float = Field(default=5.0, gt=0)


class KubernetesConfig(Strict):
    """Where multi-node JobSets run: namespace, images per environment, the shared data volume."""

    namespace: str = Field(default="sftc", min_length=1)
    # An image per environment: `sftc` holds this repository with its .venv packages, `nemo` the NeMo container + sftc.
    images: dict[Literal["sftc", "nemo"], str] = Field(default_factory=dict)
    # A ReadWriteMany claim holding the data directory, mounted at the same path as SFTC_DATA_DIR in the Dagster pods.
    data_volume_claim: str = Field(default="sftc-data", min_length=1)
    data_mount_path: str = Field(default="/data", pattern=r"^/")
    # NeMo's data loaders share tensors through /dev/shm; the default 64 MiB is far too small.
    shm_size: str = Field(default="64Gi", pattern=r"^[0-9]+(Mi|Gi)$")
    service_account: str | None = None
    rendezvous_port: int = Field(default=29500, ge=1024, le=65535)
    poll_seconds: float = Field(default=10.0, gt=0)


class StorageConfig(Strict):
    # Size of the volume behind SFTC_DATA_DIR on the GPU nodes (kubernetes.data_volume_claim, or the shared
    # filesystem under Slurm), a Kubernetes quantity.
    data_volume: Size

    @property
    def data_volume_bytes(self) -> int:
        return quantity_bytes(self.data_volume)


class RateConfig(Strict):
    """A throughput the cost estimate rests on, with where the figure comes from."""

    value: float = Field(gt=0)
    source: str = Field(min_length=1)
    # true: a published figure for this model; false: a value set here, flagged as such wherever it is shown.
    published: bool = False


class EstimateConfig(Strict):
    """What the GPU run will cost (sftc_core/cost.py): the price of a GPU-hour and the rates the phases run at."""

    gpu_hour_price: float = Field(ge=0)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    price_source: str = Field(min_length=1)
    # The real figures are expected within this factor of the estimate, either way.
    uncertainty_factor: float = Field(default=2.0, ge=1)
    finetune_tokens_per_s_per_gpu: RateConfig
    storage_gb_per_s_per_node: RateConfig
    generation_tokens_per_s_per_gpu: RateConfig


class ClusterConfig(Strict):
    node_pools: NodePools
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    storage: StorageConfig | None = None
    # None: no estimate (the commands and the report say so).
    estimate: EstimateConfig | None = None


def load_cluster_config(path: Path | str | None = None) -> ClusterConfig:
    path = path or CONFIG_DIR / "cluster.yaml"
    config = load_yaml_model(path, ClusterConfig)
    if config.node_pools.gpu.gpus < 1:
        raise ConfigError(f"{path}: field 'node_pools.gpu.gpus' must be at least 1 (GPUs per GPU step), got 0")
    return config
