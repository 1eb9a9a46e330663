"""Time-ordered train / validation / test splits of the thesis records, with an embargo between them.

Two ways to set the windows (all dates inclusive, by `as_of_date`):

- by dates (settings): train = [TRAIN_START_DATE, TRAIN_END_DATE], validation = [TRAIN_END_DATE + embargo + 1,
  TEST_START_DATE - embargo - 1], test = [TEST_START_DATE, test end];
- by days (`validation_days`, `test_days`): test = the last `test_days` calendar days of the data, validation =
  the `validation_days` before it less the embargo, train = everything earlier less the embargo.

Purge, then embargo (docs/eval-and-backtest.md, "Splits"): a record's label window runs from its entry
session to its exit session (XNYS: the first session after `as_of_date`, then `horizon_days` sessions). A
record of an earlier split whose label window reaches the first `as_of_date` of a later split (exit on or after
it) is purged from the earlier split, so no training label overlaps validation or test whatever the embargo.
The embargo is `embargo_days` calendar days dropped before the start of each later split, on top. Every record
is accounted for: in a split, purged (counted against the split it was purged from), dropped by the embargo
(counted against the split it precedes), or outside every window (before the first, after the last).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict, Features, List, Value, load_from_disk

from sftc_assets.sft_data.prompts import build_example
from sftc_assets.theses.schema import record_problems
from sftc_core.configs import SftConfig
from sftc_core.io import BeforeSwap, atomic_dir, atomic_write_json, iter_jsonl
from sftc_core.market import session_window

SPLITS = ("train", "validation", "test")
SUMMARY_FILE = "split_summary.json"

FEATURES = Features(
    {
        "id": Value("string"),
        "ticker": Value("string"),
        "as_of_date": Value("string"),
        "action": Value("string"),
        "horizon_days": Value("int32"),
        "confidence": Value("float64"),
        "reasoning": Value("string"),
        "support": List(Value("string")),
        "source_file": Value("string"),
        "instruction": Value("string"),
        "input": Value("string"),
        "output": Value("string"),
    }
)


class SplitError(ValueError):
    """The records cannot be split as asked; the message names the split, the counts and the setting to change."""


@dataclass(frozen=True)
class Window:
    start: dt.date
    end: dt.date

    def as_dict(self) -> dict:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass(frozen=True)
class SplitPlan:
    mode: Literal["dates", "days"]
    windows: dict[str, Window]  # in SPLITS order
    embargo_days: int
    # What to change when a split comes out empty, per split.
    remedies: dict[str, str]


# --- reading --------------------------------------------------------------------------------------


def jsonl_files(path: Path | str) -> list[Path]:
    """A JSONL file, or every `*.jsonl` of a directory except `*.rejects.jsonl`, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.glob("*.jsonl") if not p.name.endswith(".rejects.jsonl"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.jsonl record files (run `sftc xml-to-jsonl` first)")
        return files
    raise FileNotFoundError(f"{path}: no such JSONL file or directory")


def read_records(path: Path | str) -> tuple[list[dict], list[str]]:
    """The records of `path` (file or directory) and the files read; a line that is not a record is an error."""
    files = jsonl_files(path)
    records, seen = [], {}
    for file in files:
        for lineno, row in iter_jsonl(file):
            problems = record_problems(row)
            if problems:
                raise ValueError(
                    f"{file}:{lineno}: not a thesis record: {'; '.join(problems)} "
                    "(record lines are written by `sftc xml-to-jsonl`, docs/thesis-xml.md)"
                )
            where = f"{file}:{lineno}"
            if row["id"] in seen:
                raise ValueError(
                    f"{where}: id {row['id']!r} already used at {seen[row['id']]}; ids must be unique across the corpus"
                )
            seen[row["id"]] = where
            records.append(row)
    return records, [str(f) for f in files]


# --- planning -------------------------------------------------------------------------------------


def plan_by_dates(
    train_start: dt.date, train_end: dt.date, test_start: dt.date, test_end: dt.date, embargo_days: int
) -> SplitPlan:
    gap = dt.timedelta(days=embargo_days + 1)
    return SplitPlan(
        mode="dates",
        windows={
            "train": Window(train_start, train_end),
            "validation": Window(train_end + gap, test_start - gap),
            "test": Window(test_start, test_end),
        },
        embargo_days=embargo_days,
        remedies={
            "train": "move TRAIN_START_DATE earlier or TRAIN_END_DATE later",
            "validation": "widen the gap between TRAIN_END_DATE and TEST_START_DATE (.env), "
            "or lower --embargo-days (splits.embargo_days in configs/sft_config.yaml)",
            "test": "move TEST_START_DATE earlier (or add records after it)",
        },
    )


def plan_by_days(
    first_date: dt.date, last_date: dt.date, validation_days: int, test_days: int, embargo_days: int
) -> SplitPlan:
    if validation_days < 1 or test_days < 1:
        raise SplitError(f"--validation-days ({validation_days}) and --test-days ({test_days}) must both be at least 1")
    day = dt.timedelta(days=1)
    test_start = last_date - (test_days - 1) * day
    validation_end = test_start - (embargo_days + 1) * day
    validation_start = validation_end - (validation_days - 1) * day
    return SplitPlan(
        mode="days",
        windows={
            "train": Window(first_date, validation_start - (embargo_days + 1) * day),
            "validation": Window(validation_start, validation_end),
            "test": Window(test_start, last_date),
        },
        embargo_days=embargo_days,
        remedies={
            "train": "lower --validation-days, --test-days or --embargo-days",
            "validation": "raise --validation-days",
            "test": "raise --test-days",
        },
    )


@dataclass
class Assignment:
    splits: dict[str, list[dict]]
    dropped_by_embargo: dict[str, int]  # keyed by the split the dropped records precede
    outside: dict[str, int]  # "before" the first window, "after" the last
    purged: dict[str, int]  # keyed by the split the records were purged from


def assign(records: Iterable[dict], plan: SplitPlan) -> Assignment:
    """Place every record in a split, in an embargo gap, or outside the windows; splits sorted by (date, ticker, id).
    Nothing is purged yet (`purge`)."""
    windows = [(name, plan.windows[name]) for name in SPLITS]
    result = Assignment(
        {name: [] for name in SPLITS},
        {name: 0 for name in SPLITS[1:]},
        {"before": 0, "after": 0},
        {name: 0 for name in SPLITS[:-1]},
    )
    for record in records:
        day = dt.date.fromisoformat(record["as_of_date"])
        for index, (name, window) in enumerate(windows):
            if day < window.start:
                if index == 0:
                    result.outside["before"] += 1
                else:
                    result.dropped_by_embargo[name] += 1
                break
            if day <= window.end:
                result.splits[name].append(record)
                break
        else:
            result.outside["after"] += 1
    for rows in result.splits.values():
        rows.sort(key=lambda r: (r["as_of_date"], r["ticker"], r["id"]))
    return result


def calendar_days_bound(horizon_days: int) -> int:
    """At most this many calendar days from as_of to the exit session: 7 per 5 sessions, plus room for holidays."""
    return -(-(horizon_days + 1) * 7 // 5) + 4


def label_exits(as_of_dates: list[str], horizons: list[int]) -> list[dt.date]:
    """The exit session of each label window (XNYS, docs/eval-and-backtest.md).

    Outside the exchange calendar (before 1990, or over a year ahead) as_of_date + the conservative
    `calendar_days_bound`.
    """
    if not as_of_dates:
        return []
    _, exits = session_window(as_of_dates, horizons)
    return [
        dt.date.fromisoformat(day) + dt.timedelta(days=calendar_days_bound(h))
        if np.isnat(e)
        else dt.date.fromisoformat(str(e)[:10])
        for day, h, e in zip(as_of_dates, horizons, exits)
    ]


def _record_exits(rows: list[dict]) -> list[dt.date]:
    return label_exits([r["as_of_date"] for r in rows], [r["horizon_days"] for r in rows])


def purge(assignment: Assignment) -> None:
    """Drop from each split the records whose label window reaches the first as_of_date of a later split.

    From the last split back, so a split's first date is the one it keeps.
    """
    later_start: dt.date | None = None  # the first as_of_date of every later split
    for name in reversed(SPLITS):
        rows = assignment.splits[name]
        if later_start is not None:
            kept = [r for r, exit_ in zip(rows, _record_exits(rows)) if exit_ < later_start]
            assignment.purged[name] = len(rows) - len(kept)
            assignment.splits[name] = rows = kept
        if rows:
            first = dt.date.fromisoformat(rows[0]["as_of_date"])
            later_start = first if later_start is None else min(first, later_start)


def label_figures(assignment: Assignment) -> dict:
    """The last label exit of each split and the longest label window in calendar days (as_of to exit)."""
    last_exit, longest = {}, 0
    for name, rows in assignment.splits.items():
        exits = _record_exits(rows)
        last_exit[name] = max(exits).isoformat() if exits else None
        longest = max([longest, *((e - dt.date.fromisoformat(r["as_of_date"])).days for r, e in zip(rows, exits))])
    return {"last_label_exit": last_exit, "max_label_span_days": longest}


def check_sizes(assignment: Assignment, plan: SplitPlan, total: int, min_samples: int) -> None:
    for name in SPLITS:
        count = len(assignment.splits[name])
        if count < min_samples:
            window = plan.windows[name]
            shape = "" if window.start <= window.end else " (the window is empty: its start is after its end)"
            raise SplitError(
                f"split {name!r} would have {count} record(s), fewer than --min-samples {min_samples}: "
                f"{total} records in all, {name} window {window.start}..{window.end}{shape}; {plan.remedies[name]}"
            )


# --- building -------------------------------------------------------------------------------------


def _rows(records: list[dict], sft_config: SftConfig) -> dict[str, list]:
    columns: dict[str, list] = {name: [] for name in FEATURES}
    for record in records:
        example = build_example(record, sft_config)
        for name in columns:
            columns[name].append(example[name] if name in example else record[name])
    return columns


def _date_range(rows: list[dict]) -> dict:
    return {"first": rows[0]["as_of_date"], "last": rows[-1]["as_of_date"]} if rows else {"first": None, "last": None}


def build_splits(
    records: list[dict], plan: SplitPlan, sft_config: SftConfig, min_samples: int
) -> tuple[DatasetDict, dict]:
    assignment = assign(records, plan)
    purge(assignment)
    check_sizes(assignment, plan, len(records), min_samples)
    dataset = DatasetDict(
        {
            name: Dataset.from_dict(_rows(rows, sft_config), features=FEATURES)
            for name, rows in assignment.splits.items()
        }
    )
    summary = {
        "mode": plan.mode,
        "records": len(records),
        "embargo_days": plan.embargo_days,
        "min_samples": min_samples,
        "windows": {name: plan.windows[name].as_dict() for name in SPLITS},
        "counts": {name: len(rows) for name, rows in assignment.splits.items()},
        "date_ranges": {name: _date_range(rows) for name, rows in assignment.splits.items()},
        "actions": {
            name: dict(sorted(Counter(r["action"] for r in rows).items())) for name, rows in assignment.splits.items()
        },
        "purged": assignment.purged,
        "dropped_by_embargo": assignment.dropped_by_embargo,
        "outside_windows": assignment.outside,
        **label_figures(assignment),
    }
    accounted = (
        sum(summary["counts"].values())
        + sum(assignment.purged.values())
        + sum(assignment.dropped_by_embargo.values())
        + sum(assignment.outside.values())
    )
    assert accounted == len(records), "every record is in a split, purged, in an embargo gap or outside the windows"
    return dataset, summary


def build_dataset(
    jsonl_path: Path | str,
    out_dir: Path | str,
    sft_config: SftConfig,
    *,
    date_bounds: tuple[dt.date, dt.date, dt.date, dt.date] | None = None,
    validation_days: int | None = None,
    test_days: int | None = None,
    embargo_days: int | None = None,
    min_samples: int | None = None,
    stamp: BeforeSwap | None = None,
) -> dict:
    """Read the records, split them, and save the DatasetDict with `split_summary.json` into `out_dir` atomically.

    `date_bounds` is (train_start, train_end, test_start, test_end); `validation_days` with `test_days`
    split by days instead. `embargo_days` / `min_samples` default to configs/sft_config.yaml `splits`.
    """
    embargo = sft_config.splits.embargo_days if embargo_days is None else embargo_days
    minimum = sft_config.splits.min_samples if min_samples is None else min_samples
    if embargo < 0:
        raise SplitError(f"--embargo-days must be >= 0, got {embargo}")
    if minimum < 1:
        raise SplitError(f"--min-samples must be >= 1 (no split may be empty), got {minimum}")
    if (validation_days is None) != (test_days is None):
        raise SplitError(
            "--validation-days and --test-days go together: give both, or neither to split by the dates from settings"
        )
    if validation_days is None and date_bounds is None:
        raise SplitError("give the split dates (settings) or --validation-days with --test-days")
    records, files = read_records(jsonl_path)
    if not records:
        raise SplitError(f"{jsonl_path}: no records to split ({len(files)} file(s) read, all empty)")
    if validation_days is not None:
        dates = sorted(dt.date.fromisoformat(r["as_of_date"]) for r in records)
        plan = plan_by_days(dates[0], dates[-1], validation_days, test_days, embargo)
    else:
        plan = plan_by_dates(*date_bounds, embargo)
    dataset, summary = build_splits(records, plan, sft_config, minimum)
    summary["input_files"] = files
    with atomic_dir(out_dir, stamp) as staging:
        dataset.save_to_disk(str(staging))
        atomic_write_json(staging / SUMMARY_FILE, summary)
    return summary


# --- reading and checking what was saved ---------------------------------------------------------


def load_splits(dataset_dir: Path | str) -> DatasetDict:
    """The saved DatasetDict with its three splits; anything else is an error naming the directory and the fix."""
    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / "dataset_dict.json").is_file():
        raise FileNotFoundError(
            f"{dataset_dir}: not a saved DatasetDict (no dataset_dict.json); "
            "materialize hf_splits (sftc build-dataset) or pass the right directory"
        )
    try:
        dataset = load_from_disk(str(dataset_dir))
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        culprit = (
            _unreadable_file(dataset_dir)
            or f"{type(exc).__name__}: {exc}; rebuild it with `sftc build-dataset` (the hf_splits asset)"
        )
        raise ValueError(f"the saved DatasetDict {dataset_dir} cannot be read: {culprit}") from None
    missing = [name for name in SPLITS if name not in dataset]
    if missing:
        raise ValueError(
            f"{dataset_dir}: split(s) {', '.join(missing)} missing (it has {', '.join(dataset)}); "
            "rebuild it with `sftc build-dataset`"
        )
    return dataset


def _unreadable_file(dataset_dir: Path) -> str | None:
    """Which file of a saved DatasetDict cannot be read, why, and the fix (None if each reads): the error names it."""
    for path in sorted(dataset_dir.rglob("*")):
        if path.suffix not in (".json", ".arrow") or not path.is_file():
            continue
        try:
            with open(path, "rb") as fh:
                data = fh.read() if path.suffix == ".json" else None
        except OSError as exc:
            return f"{path}: {exc.strerror}; give this user read access to it"
        try:
            if data is not None:
                json.loads(data)
            else:
                with pa.memory_map(str(path)) as source:
                    pa.ipc.open_stream(source).read_all()
        except (ValueError, pa.ArrowException) as exc:
            what = "not valid JSON" if data is not None else "truncated or not an Arrow stream"
            return f"{path}: {what} ({exc}); rebuild it with `sftc build-dataset` (the hf_splits asset)"
    return None


def load_summary(dataset_dir: Path | str) -> dict:
    path = Path(dataset_dir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; build the splits with `sftc build-dataset`") from None


def split_problems(dataset_dir: Path | str) -> list[str]:
    """Leakage check of saved splits: no id in two splits; each split ends more than the embargo before the next
    begins; no label window (recomputed from the calendar) reaches the first as_of_date of a later split."""
    dataset = load_splits(dataset_dir)
    embargo = load_summary(dataset_dir)["embargo_days"]
    problems = []
    owner: dict[str, str] = {}
    for name in SPLITS:
        for record_id in dataset[name]["id"]:
            if record_id in owner:
                problems.append(f"id {record_id!r} is in both {owner[record_id]} and {name}")
            owner.setdefault(record_id, name)
    for name, next_name in zip(SPLITS, SPLITS[1:]):
        dates, next_dates = dataset[name]["as_of_date"], dataset[next_name]["as_of_date"]
        if not dates or not next_dates:
            problems.append(f"{name if not dates else next_name} is empty")
            continue
        last, first = dt.date.fromisoformat(max(dates)), dt.date.fromisoformat(min(next_dates))
        if (first - last).days <= embargo:
            problems.append(
                f"{name} ends {last} and {next_name} begins {first}: {(first - last).days} day(s) apart, "
                f"the embargo is {embargo}"
            )
    for index, name in enumerate(SPLITS[:-1]):
        later = [min(dataset[n]["as_of_date"]) for n in SPLITS[index + 1 :] if len(dataset[n])]
        if not later:
            continue
        later_start = dt.date.fromisoformat(min(later))
        split = dataset[name]
        exits = label_exits(list(split["as_of_date"]), list(split["horizon_days"]))
        leaks = [i for i, exit_ in enumerate(exits) if exit_ >= later_start]
        if leaks:
            row = split[leaks[0]]
            problems.append(
                f"{len(leaks)} {name} label(s) reach {later_start}, the first as_of_date after {name}: "
                f"e.g. {row['id']!r} "
                f"as of {row['as_of_date']}, horizon {row['horizon_days']} sessions, exits {exits[leaks[0]]}"
            )
    return problems
