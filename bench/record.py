"""The record every bench script leaves: one CSV row per measurement in bench/results/<script>.csv (date, commit,
machine, the figure and its baseline measured side by side in the same run, their ratio and the goal), appended run
after run; `bench/summary.py` prints the latest row of each figure (`make bench` ends with it).

    from record import Measurement, add_results_option, record
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import operator
import re
from dataclasses import dataclass
from pathlib import Path

from sftc_core.io import atomic_write_csv
from sftc_core.manifest import git_state, machine_summary

RESULTS_DIR = Path(__file__).resolve().parent / "results"
COLUMNS = (
    "date",
    "commit",
    "machine",
    "bench",
    "figure",
    "value",
    "baseline",
    "baseline_value",
    "unit",
    "ratio",
    "goal",
    "meets_goal",
)
_GOAL = re.compile(r"^(<=|>=) ?(\d+(\.\d+)?)$")
_OPERATORS = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Measurement:
    """`value` of `figure` against `baseline_value` of `baseline`, same unit; ratio = value / baseline_value, and
    `goal` ("<= 1.3", ">= 0.7" or "" for none) says which ratios are good."""

    figure: str
    value: float
    baseline: str
    baseline_value: float
    unit: str
    goal: str = ""

    def __post_init__(self) -> None:
        if self.goal and not _GOAL.match(self.goal):
            raise ValueError(f"goal {self.goal!r}: expected '<= N' or '>= N' (or '' for none)")
        if self.baseline_value <= 0:
            raise ValueError(
                f"{self.figure}: baseline {self.baseline} is {self.baseline_value}, a ratio needs a positive baseline"
            )

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value

    @property
    def meets_goal(self) -> bool | None:
        if not self.goal:
            return None
        op, bound, _ = _GOAL.match(self.goal).groups()
        return _OPERATORS[op](self.ratio, float(bound))


def add_results_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR,
        metavar="DIR",
        help=f"where the CSV rows go (default: {RESULTS_DIR})",
    )


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def record(bench: str, measurements: list[Measurement], results_dir: Path = RESULTS_DIR) -> Path:
    """Append one row per measurement to `results_dir/<bench>.csv` (the file rewritten whole, atomically)."""
    state = git_state()
    commit = state["git_commit"][:12] + ("-dirty" if state["git_dirty"] else "")
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    machine = machine_summary()
    rows = [
        {
            "date": date,
            "commit": commit,
            "machine": machine,
            "bench": bench,
            "figure": m.figure,
            "value": f"{m.value:.6g}",
            "baseline": m.baseline,
            "baseline_value": f"{m.baseline_value:.6g}",
            "unit": m.unit,
            "ratio": f"{m.ratio:.4g}",
            "goal": m.goal,
            "meets_goal": "" if m.meets_goal is None else str(m.meets_goal).lower(),
        }
        for m in measurements
    ]
    path = Path(results_dir) / f"{bench}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(path, read_rows(path) + rows, COLUMNS)
    print(f"recorded {len(rows)} measurement(s) in {path}")
    return path
