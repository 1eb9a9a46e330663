"""The one `Settings` object: the environment and `.env`, the profile, and every config file, validated on load.

Read once at the edges (the code location's definitions.py, the `sftc` command's entry) and passed down.
Every error names the variable or the file and field, and the expected form.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values
from pydantic import ConfigDict, Field, SecretStr

from sftc_core.configs import (
    CONFIG_DIR,
    PROJECT_ROOT,
    BacktestConfig,
    ClusterConfig,
    ConfigError,
    EvalConfig,
    FinetuneConfig,
    GpuCheckConfig,
    PricesConfig,
    ProfileConfig,
    SftConfig,
    Strict,
    load_backtest_config,
    load_cluster_config,
    load_eval_config,
    load_finetune_config,
    load_gpu_check_config,
    load_profile,
    load_sft_config,
    profile_path,
    read_model_config,
    recipe_lora,
    reference_config_path,
)
from sftc_core.months import months_between
from sftc_core.paths import ArtifactPaths

# Where Kubernetes places work: nowhere (one machine, the default), one pod per run, or one pod per step.
Placement = Literal["none", "run", "step"]
PROFILE_NAMES = ("toy", "full")


class Settings(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    profile: ProfileConfig
    # Every profile, validated at load: the GPU plan of the full profile is checked from the toy one too.
    profiles: dict[str, ProfileConfig]
    # The reference config.json of each profile's base model (model.reference_config), read and checked at load.
    reference_models: dict[str, dict] = Field(default_factory=dict)
    sft: SftConfig
    eval_config: EvalConfig
    backtest: BacktestConfig
    finetune: FinetuneConfig
    cluster: ClusterConfig
    gpu_check: GpuCheckConfig
    train_backend: Literal["hf", "nemo"]
    train_start_date: dt.date
    train_end_date: dt.date
    test_start_date: dt.date
    test_end_date: dt.date
    data_dir: Path
    # Where the config files were read from (error messages name them; the GPU plan reads the reference model config).
    config_dir: Path = CONFIG_DIR
    # SFTC_NEMO_PYTHON: the NeMo environment's interpreter, over finetune.yaml's nemo_python.
    nemo_python_override: Path | None = None
    # SFTC_VLLM_PYTHON: the vLLM environment's interpreter, over the profile's evaluation.serving.vllm_python.
    vllm_python_override: Path | None = None
    # Where a Kubernetes deployment places work (SFTC_K8S_PLACEMENT): none (not on Kubernetes), run or step.
    k8s_placement: Placement = "none"
    # SFTC_AUTOMATION=off: the automation sensors and the nightly schedule start stopped
    # (the web UI runs nothing by itself).
    automation: bool = True
    eodhd_api_key: SecretStr | None = None
    # SFTC_EVAL_API_KEY: the bearer token of an evaluation endpoint that asks for one.
    eval_api_key: SecretStr | None = None

    @property
    def profile_name(self) -> str:
        return self.profile.name

    @property
    def full_profile(self) -> ProfileConfig:
        """The profile of the GPU run that the GPU plan speaks of."""
        return self.profiles["full"]

    @property
    def nemo_python(self) -> Path:
        """The NeMo environment's interpreter: SFTC_NEMO_PYTHON, else finetune.yaml's nemo_python
        (relative to the repository)."""
        path = self.nemo_python_override or Path(self.finetune.nemo_python)
        return path if path.is_absolute() else PROJECT_ROOT / path

    @property
    def vllm_python(self) -> Path:
        """The vLLM environment's interpreter: SFTC_VLLM_PYTHON, else the profile's evaluation.serving.vllm_python."""
        path = self.vllm_python_override or Path(self.profile.evaluation.serving.vllm_python)
        return path if path.is_absolute() else PROJECT_ROOT / path

    @property
    def paths(self) -> ArtifactPaths:
        return ArtifactPaths(self.data_dir)

    @property
    def prices(self) -> PricesConfig:
        return self.eval_config.prices

    @property
    def base_checkpoint_dir(self) -> Path:
        """The FP8 base checkpoint: built under the data dir in the toy profile, an external path in the full one."""
        external = self.profile.model.base_checkpoint_path
        return Path(external) if self.profile.model.kind == "external" and external else self.paths.base_checkpoint

    @property
    def date_bounds(self) -> tuple[dt.date, dt.date, dt.date, dt.date]:
        return self.train_start_date, self.train_end_date, self.test_start_date, self.test_end_date

    def artifacts_of(self, asset: str, partition: str | None = None) -> tuple[Path, ...]:
        """The files or directories an asset of the chain writes (for one partition of a monthly asset): what
        its marker guards. Empty for what sftc does not write: observed theses and the external release."""
        paths = self.paths
        external = self.profile.corpus.source == "external"
        by_asset = {
            "raw_xml": () if external or partition is None else (paths.raw_xml_month(partition),),
            "thesis_jsonl": () if partition is None else (paths.jsonl_month(partition), paths.rejects_month(partition)),
            "hf_splits": (paths.hf_splits,),
            "base_checkpoint": (paths.base_checkpoint,) if self.profile.model.kind == "toy" else (),
            "nemo_jsonl": (paths.nemo_jsonl,),
            "bf16_checkpoint": (paths.bf16_checkpoint,),
            "nemo_model": (paths.nemo_model,),
            "sft_model": (paths.sft_model,),
            "eval_csv": () if partition is None else (paths.eval_month(partition),),
            "backtest_report": (paths.backtest,),
            "validation_report": (paths.reports / "validation_report.md", paths.reports / "validation_report.json"),
        }
        return by_asset.get(asset, ())

    @property
    def thesis_months(self) -> list[str]:
        """The profile's months of raw_xml / thesis_jsonl (YYYY-MM, inclusive)."""
        return months_between(self.profile.partitions.start, self.profile.partitions.end)

    @property
    def test_months(self) -> list[str]:
        """The months of the test window (eval_csv partitions)."""
        return months_between(f"{self.test_start_date:%Y-%m}", f"{self.test_end_date:%Y-%m}")


ENV_VARS = (
    "EODHD_API_KEY",
    "TRAIN_START_DATE",
    "TRAIN_END_DATE",
    "TEST_START_DATE",
    "TRAIN_BACKEND",
    "SFTC_PROFILE",
    "SFTC_DATA_DIR",
    "SFTC_NEMO_PYTHON",
    "SFTC_VLLM_PYTHON",
    "SFTC_K8S_PLACEMENT",
    "SFTC_EVAL_API_KEY",
    "SFTC_AUTOMATION",
)


def _parse_date(var: str, value: str) -> dt.date:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ConfigError(f"{var}={value!r}: expected a date written YYYY-MM-DD, e.g. 2012-09-01")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{var}={value!r}: not a real calendar date (expected YYYY-MM-DD)") from None


def _choice(var: str, value: str, allowed: tuple[str, ...], meaning: str = "") -> str:
    value = value.strip().lower()
    if value not in allowed:
        raise ConfigError(f"{var}={value!r}: expected one of {', '.join(allowed)}{meaning}")
    return value


def load_settings(
    env: dict[str, str] | None = None, dotenv_path: Path | str | None = None, config_dir: Path = CONFIG_DIR
) -> Settings:
    """Settings from the environment, then `.env`, then the profile's defaults; every config file loaded and checked.

    `env` replaces os.environ (tests); `dotenv_path` defaults to `.env` in the working directory.
    """
    environ = dict(os.environ if env is None else env)
    dotenv_file = Path(dotenv_path) if dotenv_path is not None else Path(".env")
    values = {k: v for k, v in dotenv_values(dotenv_file).items() if v is not None} if dotenv_file.is_file() else {}
    values.update({k: environ[k] for k in ENV_VARS if k in environ})
    values = {k: v.strip() for k, v in values.items() if v is not None and v.strip() != ""}

    finetune = load_finetune_config(Path(config_dir) / "nemo" / "finetune.yaml")
    profiles = {name: load_profile(name, config_dir) for name in PROFILE_NAMES}
    # the Hugging Face backend's LoRA is the recipe's: filled in here, at the edge, for every profile
    profiles = {
        name: p.model_copy(update={"training": recipe_lora(p.training, finetune, profile_path(name, config_dir))})
        for name, p in profiles.items()
    }
    profile = profiles[_choice("SFTC_PROFILE", values.get("SFTC_PROFILE", "toy"), PROFILE_NAMES)]
    backend = _choice("TRAIN_BACKEND", values.get("TRAIN_BACKEND", profile.training.backend), ("hf", "nemo"))
    placement = _choice(
        "SFTC_K8S_PLACEMENT",
        values.get("SFTC_K8S_PLACEMENT", "none"),
        ("none", "run", "step"),
        " (not on Kubernetes, one pod per run, or one pod per step)",
    )
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
    key, eval_key = values.get("EODHD_API_KEY"), values.get("SFTC_EVAL_API_KEY")
    references = {name: reference_config_path(p, config_dir) for name, p in profiles.items()}
    return Settings(
        profile=profile,
        profiles=profiles,
        reference_models={name: read_model_config(path) for name, path in references.items() if path is not None},
        sft=load_sft_config(Path(config_dir) / "sft_config.yaml"),
        eval_config=load_eval_config(Path(config_dir) / "eval_config.yaml"),
        backtest=load_backtest_config(Path(config_dir) / "backtest_config.yaml"),
        finetune=finetune,
        cluster=load_cluster_config(Path(config_dir) / "cluster.yaml"),
        gpu_check=load_gpu_check_config(Path(config_dir) / "gpu_check.yaml"),
        train_backend=backend,
        test_end_date=max(profile.dates.test_end, parsed["test_start_date"]),
        data_dir=Path(values.get("SFTC_DATA_DIR", "data")).absolute(),
        config_dir=Path(config_dir),
        nemo_python_override=Path(values["SFTC_NEMO_PYTHON"]) if "SFTC_NEMO_PYTHON" in values else None,
        vllm_python_override=Path(values["SFTC_VLLM_PYTHON"]) if "SFTC_VLLM_PYTHON" in values else None,
        k8s_placement=placement,
        automation=_choice(
            "SFTC_AUTOMATION",
            values.get("SFTC_AUTOMATION", "on"),
            ("on", "off"),
            " (off: sensors and schedule start stopped)",
        )
        == "on",
        eodhd_api_key=SecretStr(key) if key else None,
        eval_api_key=SecretStr(eval_key) if eval_key else None,
        **parsed,
    )
