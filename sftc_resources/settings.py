"""Settings (.env and environment) and the YAML configs, validated on load.

No Dagster here: the command line, the assets and the tests all call `load_settings`.
Every error names the variable or the file and field, and the expected form.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"

ACTIONS = ("STRONG_BUY", "BUY", "HOLD", "SELL", "STRONG_SELL")


class ConfigError(ValueError):
    """A setting or config value is wrong; the message says where and what is expected."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- configs/profiles/<name>.yaml -------------------------------------------------------------

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class PartitionsConfig(_Strict):
    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _month(cls, value: str) -> str:
        if not _MONTH.match(value):
            raise ValueError(f"expected a month written YYYY-MM, got {value!r}")
        return value


class DatesConfig(_Strict):
    train_start: dt.date
    train_end: dt.date
    test_start: dt.date
    test_end: dt.date


class CorpusConfig(_Strict):
    source: Literal["sample", "external"]
    tickers: list[str]
    per_month: int = Field(ge=0)
    seed: int
    horizon_days: int = Field(ge=1, le=260)


class ModelConfig(_Strict):
    kind: Literal["toy", "external"]
    seed: int = 0
    vocab_size: int = Field(gt=0)
    base_checkpoint_path: str | None = None


class ComputeConfig(_Strict):
    cpu_max_checkpoint_bytes: int = Field(gt=0)
    # Size of the profile's base checkpoint, known before it exists: `auto` assets route to a GPU node above the CPU limit.
    expected_checkpoint_bytes: int | None = Field(default=None, gt=0)


class LoraConfig(_Strict):
    rank: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    # DeepSeek-V3's attention projections (as NeMo's LoRA default); experts are fused tensors, not Linear modules.
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"], min_length=1
    )


class TrainingConfig(_Strict):
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
    lora: LoraConfig = Field(default_factory=LoraConfig)
    keep_checkpoints: int = Field(default=2, gt=0)
    # Intra-op threads when training on CPU (None: torch's default, one per core).
    cpu_threads: int | None = Field(default=None, gt=0)
    # Validation prompts generated greedily after training to measure the parse rate (0: skip).
    parse_check_samples: int = Field(default=64, ge=0)


class EvaluationConfig(_Strict):
    max_new_tokens: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    # torch threads for generation on CPU (None: torch's default); on a busy 2-core node 1 beats 2.
    cpu_threads: int | None = Field(default=None, gt=0)


class ProfileConfig(_Strict):
    name: Literal["toy", "full"]
    partitions: PartitionsConfig
    dates: DatesConfig
    corpus: CorpusConfig
    price_source: Literal["local", "eodhd"]
    model: ModelConfig
    compute: ComputeConfig
    training: TrainingConfig
    evaluation: EvaluationConfig


# --- configs/sft_config.yaml ------------------------------------------------------------------


class PromptConfig(_Strict):
    instruction: str = Field(min_length=1)
    input_template: str = Field(min_length=1)
    template: str = Field(min_length=1)

    @model_validator(mode="after")
    def _placeholders(self) -> "PromptConfig":
        for name in ("{instruction}", "{input}"):
            if name not in self.template:
                raise ValueError(f"prompt.template must contain {name}")
        return self


class SplitsConfig(_Strict):
    embargo_days: int = Field(ge=0)
    min_samples: int = Field(ge=1)


class SftConfig(_Strict):
    prompt: PromptConfig
    special_tokens: list[str] = Field(min_length=1)
    splits: SplitsConfig
    max_seq_length: int = Field(gt=0)


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
            f"field '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}"
            + (f" (got {err['input']!r})" if err["type"] != "missing" else "")
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None


def load_profile(name: str, config_dir: Path = CONFIG_DIR) -> ProfileConfig:
    return load_yaml_model(config_dir / "profiles" / f"{name}.yaml", ProfileConfig)


def load_sft_config(path: Path | str | None = None) -> SftConfig:
    return load_yaml_model(path or CONFIG_DIR / "sft_config.yaml", SftConfig)


# --- .env and the environment -----------------------------------------------------------------


class Secret:
    """A value that never prints: repr and str are masked, `reveal()` gives it to the one caller that sends it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


class Settings(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    profile: ProfileConfig
    train_backend: Literal["hf", "nemo"]
    train_start_date: dt.date
    train_end_date: dt.date
    test_start_date: dt.date
    test_end_date: dt.date
    data_dir: Path
    eodhd_api_key: Secret | None = None

    @property
    def profile_name(self) -> str:
        return self.profile.name


_ENV_VARS = ("EODHD_API_KEY", "TRAIN_START_DATE", "TRAIN_END_DATE", "TEST_START_DATE", "TRAIN_BACKEND", "SFTC_PROFILE", "SFTC_DATA_DIR")


def _parse_date(var: str, value: str) -> dt.date:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ConfigError(f"{var}={value!r}: expected a date written YYYY-MM-DD, e.g. 2012-09-01")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{var}={value!r}: not a real calendar date (expected YYYY-MM-DD)") from None


def _choice(var: str, value: str, allowed: tuple[str, ...]) -> str:
    value = value.strip().lower()
    if value not in allowed:
        raise ConfigError(f"{var}={value!r}: expected one of {', '.join(allowed)}")
    return value


def load_settings(env: dict[str, str] | None = None, dotenv_path: Path | str | None = None) -> Settings:
    """Settings from the environment, then `.env`, then the profile's defaults.

    `env` replaces os.environ (tests); `dotenv_path` defaults to `.env` in the working directory.
    """
    environ = dict(os.environ if env is None else env)
    dotenv_file = Path(dotenv_path) if dotenv_path is not None else Path(".env")
    values = {k: v for k, v in dotenv_values(dotenv_file).items() if v is not None} if dotenv_file.is_file() else {}
    values.update({k: environ[k] for k in _ENV_VARS if k in environ})
    values = {k: v.strip() for k, v in values.items() if v is not None and v.strip() != ""}

    profile = load_profile(_choice("SFTC_PROFILE", values.get("SFTC_PROFILE", "toy"), ("toy", "full")))
    backend = _choice("TRAIN_BACKEND", values.get("TRAIN_BACKEND", profile.training.backend), ("hf", "nemo"))
    dates = {
        "train_start_date": values.get("TRAIN_START_DATE"),
        "train_end_date": values.get("TRAIN_END_DATE"),
        "test_start_date": values.get("TEST_START_DATE"),
    }
    defaults = {
        "train_start_date": profile.dates.train_start,
        "train_end_date": profile.dates.train_end,
        "test_start_date": profile.dates.test_start,
    }
    parsed = {k: _parse_date(k.upper(), v) if v else defaults[k] for k, v in dates.items()}
    if not parsed["train_start_date"] <= parsed["train_end_date"] < parsed["test_start_date"]:
        raise ConfigError(
            "TRAIN_START_DATE <= TRAIN_END_DATE < TEST_START_DATE must hold, got "
            f"{parsed['train_start_date']}, {parsed['train_end_date']}, {parsed['test_start_date']}"
        )
    test_end = max(profile.dates.test_end, parsed["test_start_date"])
    key = values.get("EODHD_API_KEY")
    return Settings(
        profile=profile,
        train_backend=backend,
        test_end_date=test_end,
        data_dir=Path(values.get("SFTC_DATA_DIR", "data")).absolute(),
        eodhd_api_key=Secret(key) if key else None,
        **parsed,
    )
