"""configs/eval_config.yaml: prices and the completions client of the evaluation."""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    Field,
)

from sftc_core.configs.base import CONFIG_DIR, Strict, load_yaml_model


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
    """The completions client: each request's timeout, its retries,
    and how long a started server may take to come up."""

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


def load_eval_config(path: Path | str | None = None) -> EvalConfig:
    return load_yaml_model(path or CONFIG_DIR / "eval_config.yaml", EvalConfig)
