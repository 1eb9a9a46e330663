"""Time splits: every record accounted for, no leakage, clear errors, the saved DatasetDict."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import exchange_calendars as xcals
import pytest
from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftc_assets.sft_data import splits
from sftc_core.configs import load_sft_config
from sftc_jobs.cli import main as sftc

SFT = load_sft_config()
SESSIONS = [d.date() for d in xcals.get_calendar("XNYS", start="2009-01-01", end="2013-12-31").sessions]
BOUNDS = (dt.date(2010, 1, 1), dt.date(2010, 6, 30), dt.date(2010, 9, 1), dt.date(2010, 12, 31))


def record(ticker: str, day: dt.date | str, horizon: int = 5, action: str = "HOLD") -> dict:
    day = str(day)
    return {
        "id": f"{ticker.lower()}-{day}",
        "ticker": ticker,
        "as_of_date": day,
        "reasoning": f"{ticker} on {day}.",
        "support": [f"fact about {ticker}", "another; with a semicolon"],
        "action": action,
        "horizon_days": horizon,
        "confidence": None,
        "source_file": f"{day[:4]}/{day[5:7]}/{ticker}.xml",
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def session_records(start: str, end: str, tickers=("AAPL", "IBM")) -> list[dict]:
    days = [d for d in SESSIONS if dt.date.fromisoformat(start) <= d <= dt.date.fromisoformat(end)]
    return [record(t, d) for d in days for t in tickers]


def label_end(as_of: str, horizon: int) -> dt.date:
    """Exit session straight from the calendar: entry is the first session after as_of, exit h sessions later."""
    day = dt.date.fromisoformat(as_of)
    entry = next(i for i, s in enumerate(SESSIONS) if s > day)
    return SESSIONS[entry + horizon]


# --- the property ---------------------------------------------------------------------------------

dates = st.dates(min_value=dt.date(2010, 1, 1), max_value=dt.date(2010, 12, 31))


@st.composite
def corpora(draw):
    days = draw(st.lists(dates, min_size=1, max_size=60))
    rows = [record(f"T{i % 3}", day, draw(st.integers(1, 8))) | {"id": f"r{i}"} for i, day in enumerate(days)]
    train_start, train_end, test_start = sorted(draw(st.lists(dates, min_size=3, max_size=3, unique=True)))
    test_end = draw(st.dates(min_value=test_start, max_value=dt.date(2011, 1, 31)))
    return rows, (train_start, train_end, test_start, test_end), draw(st.integers(0, 20))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora(), st.booleans(), st.integers(1, 90), st.integers(1, 90))
def test_split_property(corpus, by_days, validation_days, test_days):
    rows, bounds, embargo = corpus
    if by_days:
        ordered = sorted(dt.date.fromisoformat(r["as_of_date"]) for r in rows)
        plan = splits.plan_by_days(ordered[0], ordered[-1], validation_days, test_days, embargo)
    else:
        plan = splits.plan_by_dates(*bounds, embargo)
    result = splits.assign(rows, plan)
    splits.purge(result)

    placed = [r["id"] for name in splits.SPLITS for r in result.splits[name]]
    assert len(placed) == len(set(placed)), "no record in two splits"
    assert len(placed) + sum(result.purged.values()) + sum(result.dropped_by_embargo.values()) + sum(
        result.outside.values()
    ) == len(rows)
    for name in splits.SPLITS:
        window = plan.windows[name]
        assert all(window.start <= dt.date.fromisoformat(r["as_of_date"]) <= window.end for r in result.splits[name])
        assert [r["as_of_date"] for r in result.splits[name]] == sorted(r["as_of_date"] for r in result.splits[name])
    non_empty = [result.splits[n] for n in splits.SPLITS if result.splits[n]]
    for earlier, later in zip(non_empty, non_empty[1:]):
        gap = dt.date.fromisoformat(later[0]["as_of_date"]) - dt.date.fromisoformat(earlier[-1]["as_of_date"])
        assert gap.days > embargo

    # Whatever the embargo: no kept label reaches a later split, and only such labels were purged.
    windowed = splits.assign(rows, plan)
    for index, name in enumerate(splits.SPLITS):
        later = [
            dt.date.fromisoformat(result.splits[n][0]["as_of_date"])
            for n in splits.SPLITS[index + 1 :]
            if result.splits[n]
        ]
        kept = {r["id"] for r in result.splits[name]}
        for r in windowed.splits[name]:
            reaches = bool(later) and label_end(r["as_of_date"], r["horizon_days"]) >= min(later)
            assert (r["id"] not in kept) == reaches, (name, r)
        assert result.purged.get(name, 0) == len(windowed.splits[name]) - len(kept)


def test_a_short_embargo_purges_exactly_the_labels_that_reach_the_next_split():
    rows = session_records("2010-01-01", "2010-12-31")
    plan = splits.plan_by_dates(*BOUNDS, 2)
    result = splits.assign(rows, plan)
    splits.purge(result)
    # Train ends 2010-06-30; validation starts 2010-07-03, its first session 2010-07-06 (July 5 is a holiday).
    # A 5-session label as of 2010-06-24 enters 06-25 and exits 07-02; as of 06-25 it enters 06-28 and exits 07-06.
    assert label_end("2010-06-24", 5) == dt.date(2010, 7, 2) and label_end("2010-06-25", 5) == dt.date(2010, 7, 6)
    assert [r["as_of_date"] for r in result.splits["train"]][-2:] == ["2010-06-24", "2010-06-24"]
    assert result.purged["train"] == 4 * 2  # June 25, 28, 29 and 30, both tickers
    summary = splits.build_splits(rows, plan, SFT, 1)[1]
    assert summary["purged"] == result.purged and summary["last_label_exit"]["train"] == "2010-07-02"


# --- building and saving --------------------------------------------------------------------------


@pytest.fixture
def jsonl_dir(tmp_path) -> Path:
    rows = session_records("2009-12-01", "2011-01-31")
    root = tmp_path / "jsonl"
    for month in sorted({r["as_of_date"][:7] for r in rows}):
        write_jsonl(root / f"{month}.jsonl", [r for r in rows if r["as_of_date"].startswith(month)])
    # Rejects files sit beside the records and are not records.
    write_jsonl(
        root / "2010-01.rejects.jsonl",
        [{"source_file": "x.xml", "index": None, "field": None, "reason": "malformed_xml", "detail": "bad"}],
    )
    return root


def test_build_by_dates_saves_splits_and_summary(jsonl_dir, tmp_path):
    out = tmp_path / "hf"
    summary = splits.build_dataset(jsonl_dir, out, SFT, date_bounds=BOUNDS, embargo_days=10)
    dataset = load_from_disk(str(out))
    assert set(dataset) == set(splits.SPLITS)
    assert {"id", "ticker", "as_of_date", "action", "horizon_days", "instruction", "input", "output"} <= set(
        dataset["train"].column_names
    )
    assert json.loads((out / splits.SUMMARY_FILE).read_text()) == json.loads(json.dumps(summary))
    total = (
        sum(summary["counts"].values())
        + sum(summary["purged"].values())
        + sum(summary["dropped_by_embargo"].values())
        + sum(summary["outside_windows"].values())
    )
    assert total == summary["records"] == len(session_records("2009-12-01", "2011-01-31"))
    assert summary["outside_windows"]["before"] > 0 and summary["outside_windows"]["after"] > 0
    assert summary["dropped_by_embargo"]["validation"] > 0 and summary["dropped_by_embargo"]["test"] > 0
    assert summary["date_ranges"]["train"] == {"first": "2010-01-04", "last": "2010-06-30"}
    assert (
        summary["date_ranges"]["validation"]["first"] >= "2010-07-11"
        and summary["date_ranges"]["validation"]["last"] <= "2010-08-21"
    )
    assert summary["date_ranges"]["test"]["first"] == "2010-09-01"
    assert splits.split_problems(out) == []
    first = dataset["train"][0]
    assert first["output"].endswith("<action>HOLD</action>") and "another\\; with a semicolon" in first["output"]
    assert [p for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_build_is_deterministic(jsonl_dir, tmp_path):
    a = splits.build_dataset(jsonl_dir, tmp_path / "a", SFT, date_bounds=BOUNDS)
    b = splits.build_dataset(jsonl_dir, tmp_path / "b", SFT, date_bounds=BOUNDS)
    assert a == b
    da, db = load_from_disk(str(tmp_path / "a")), load_from_disk(str(tmp_path / "b"))
    assert all(da[n].to_list() == db[n].to_list() for n in splits.SPLITS)


def test_build_by_days(jsonl_dir, tmp_path):
    summary = splits.build_dataset(jsonl_dir, tmp_path / "hf", SFT, validation_days=30, test_days=20, embargo_days=12)
    assert summary["mode"] == "days"
    assert summary["windows"]["test"] == {"start": "2011-01-12", "end": "2011-01-31"}
    assert summary["windows"]["validation"] == {"start": "2010-12-01", "end": "2010-12-30"}
    assert summary["outside_windows"] == {"before": 0, "after": 0}
    assert splits.split_problems(tmp_path / "hf") == []


def test_empty_split_is_a_clear_error_and_leaves_nothing(jsonl_dir, tmp_path):
    out = tmp_path / "hf"
    # With a 40-day embargo, July and August lose everything to the two gaps.
    with pytest.raises(splits.SplitError) as info:
        splits.build_dataset(jsonl_dir, out, SFT, date_bounds=BOUNDS, embargo_days=40)
    message = str(info.value)
    assert (
        "'validation'" in message
        and "0 record(s)" in message
        and "TEST_START_DATE" in message
        and "--embargo-days" in message
    )
    assert "start is after its end" in message
    assert not out.exists() and list(tmp_path.glob(".hf*")) == []


def test_min_samples(jsonl_dir, tmp_path):
    with pytest.raises(
        splits.SplitError, match=r"split 'validation' would have \d+ record\(s\), fewer than --min-samples 100"
    ):
        splits.build_dataset(jsonl_dir, tmp_path / "hf", SFT, date_bounds=BOUNDS, min_samples=100)


def test_days_options_go_together(jsonl_dir, tmp_path):
    with pytest.raises(splits.SplitError, match="go together"):
        splits.build_dataset(jsonl_dir, tmp_path / "hf", SFT, validation_days=10)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", r"bad\.jsonl:2: not valid JSON"),
        ("[1, 2]", r"bad\.jsonl:2: expected a JSON object"),
        (json.dumps({"id": "x"}), r"bad\.jsonl:2: not a thesis record: keys are"),
    ],
)
def test_a_line_that_is_not_a_record_names_file_and_line(tmp_path, line, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record("IBM", "2010-02-01")) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=expected):
        splits.build_dataset(path, tmp_path / "hf", SFT, date_bounds=BOUNDS)


def test_duplicate_ids_across_files(tmp_path):
    write_jsonl(tmp_path / "j" / "a.jsonl", [record("IBM", "2010-02-01")])
    write_jsonl(tmp_path / "j" / "b.jsonl", [record("IBM", "2010-02-01")])
    with pytest.raises(ValueError, match=r"b\.jsonl:1: id 'ibm-2010-02-01' already used at .*a\.jsonl:1"):
        splits.read_records(tmp_path / "j")


def test_split_problems_sees_a_tampered_dataset(jsonl_dir, tmp_path):
    out = tmp_path / "hf"
    splits.build_dataset(jsonl_dir, out, SFT, date_bounds=BOUNDS)
    summary = json.loads((out / splits.SUMMARY_FILE).read_text())
    summary["embargo_days"] = 400
    (out / splits.SUMMARY_FILE).write_text(json.dumps(summary))
    problems = splits.split_problems(out)
    assert len(problems) == 2 and "the embargo is 400" in problems[0]


def test_split_problems_sees_a_label_reaching_the_next_split(jsonl_dir, tmp_path):
    out = tmp_path / "hf"
    summary = splits.build_dataset(jsonl_dir, out, SFT, date_bounds=BOUNDS, embargo_days=0)
    assert summary["purged"]["train"] > 0 and splits.split_problems(out) == []
    dataset = load_from_disk(str(out))
    # Put back a record the purge took out: the last train session's label ends after validation begins.
    leaked = dict(dataset["train"][-1]) | {"id": "leak", "as_of_date": "2010-06-30"}
    tampered = DatasetDict(
        {
            **dataset,
            "train": concatenate_datasets(
                [dataset["train"], Dataset.from_list([leaked], features=dataset["train"].features)]
            ),
        }
    )
    tampered.save_to_disk(str(tmp_path / "tampered"))
    (tmp_path / "tampered" / splits.SUMMARY_FILE).write_text((out / splits.SUMMARY_FILE).read_text())
    problems = splits.split_problems(tmp_path / "tampered")
    assert len(problems) == 1 and "1 train label(s) reach 2010-07-01" in problems[0] and "'leak'" in problems[0], (
        problems
    )


def test_cli_build_dataset(jsonl_dir, tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setenv("TRAIN_START_DATE", "2010-01-01")
    monkeypatch.setenv("TRAIN_END_DATE", "2010-06-30")
    monkeypatch.setenv("TEST_START_DATE", "2010-09-01")
    assert sftc(["build-dataset", "--jsonl", str(jsonl_dir), "--out-dir", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert (
        "train: " in out
        and "validation: " in out
        and f"dropped by the {load_sft_config().splits.embargo_days}-day embargo" in out
    )
    # An embargo shorter than the labels: the purge keeps the splits leak-free.
    assert (
        sftc(["build-dataset", "--jsonl", str(jsonl_dir), "--out-dir", str(tmp_path / "hf7"), "--embargo-days", "7"])
        == 0
    )
    assert "purged (labels reaching a later split): " in capsys.readouterr().out
    assert (
        splits.split_problems(tmp_path / "hf7") == []
        and sum(splits.load_summary(tmp_path / "hf7")["purged"].values()) > 0
    )
    assert (
        sftc(["build-dataset", "--jsonl", str(jsonl_dir), "--out-dir", str(tmp_path / "hf2"), "--embargo-days", "40"])
        == 2
    )
    assert "'validation'" in capsys.readouterr().err
    assert sftc(["build-dataset", "--jsonl", str(tmp_path / "missing"), "--out-dir", str(tmp_path / "hf3")]) == 2
    assert (
        sftc(
            [
                "build-dataset",
                "--jsonl",
                str(jsonl_dir),
                "--out-dir",
                str(tmp_path / "hf4"),
                "--validation-days",
                "30",
                "--test-days",
                "20",
            ]
        )
        == 0
    )
