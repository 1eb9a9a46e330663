"""configs/backtest_config.yaml: the portfolio and the uncertainty of the backtest."""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    Field,
    field_validator,
)

from sftc_core.configs.base import CONFIG_DIR, Strict, load_yaml_model
from sftc_core.target_format import ACTIONS


class BacktestConfig(Strict):
    scores: dict[str, float]
    cost_bps: float = Field(default=5.0, ge=0)
    risk_free_rate: float = 0.0
    periods_per_year: int = Field(default=252, gt=0)
    # Uncertainty (spec v2): bootstrap resamples of the theses, permutations of the predictions, their seed
    # (0: not computed).
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


def load_backtest_config(path: Path | str | None = None) -> BacktestConfig:
    return load_yaml_model(path or CONFIG_DIR / "backtest_config.yaml", BacktestConfig)
