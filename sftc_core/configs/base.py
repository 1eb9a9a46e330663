"""What every config model shares: the project's folders, ConfigError, the Strict base, YAML loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
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
            f"field '{'.'.join(str(p) for p in err['loc']) or '(across fields)'}': "
            f"{err['msg'].removeprefix('Value error, ')}"
            # A rule across fields already names its values; the input would be the whole section.
            + (
                f" (got {err['input']!r})"
                if err["type"] != "missing" and not isinstance(err["input"], (dict, list))
                else ""
            )
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
