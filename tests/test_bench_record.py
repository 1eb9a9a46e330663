"""The benches leave a record: a CSV row per measurement (date, commit, machine, figure, baseline, ratio, goal), and
`bench/summary.py` prints the latest row of each figure with the one before it."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from record import COLUMNS, Measurement, record  # noqa: E402
from summary import latest_rows, summary_table  # noqa: E402


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_each_measurement_is_a_row_appended_run_after_run(tmp_path):
    first = [
        Measurement("speed", 70.0, "bare", 100.0, "files/s", ">= 0.7"),
        Measurement("time", 4.0, "read", 1.0, "s", "<= 3"),
    ]
    path = record("demo", first, tmp_path)
    record("demo", [Measurement("speed", 60.0, "bare", 100.0, "files/s", ">= 0.7")], tmp_path)
    rows = _rows(path)
    assert list(rows[0]) == list(COLUMNS) and len(rows) == 3
    speed, time, again = rows
    assert (speed["ratio"], speed["meets_goal"], time["ratio"], time["meets_goal"], again["meets_goal"]) == (
        "0.7",
        "true",
        "4",
        "false",
        "false",
    )
    assert speed["commit"] and speed["machine"] and speed["date"].endswith("+00:00") and speed["bench"] == "demo"
    assert Measurement("x", 1.0, "y", 2.0, "s").meets_goal is None


def test_a_goal_must_be_a_bound_and_a_baseline_positive():
    with pytest.raises(ValueError, match="goal 'fast': expected '<= N' or '>= N'"):
        Measurement("x", 1.0, "y", 2.0, "s", "fast")
    with pytest.raises(ValueError, match="a ratio needs a positive baseline"):
        Measurement("x", 1.0, "y", 0.0, "s")


def test_summary_shows_the_latest_row_of_each_figure_and_the_ratio_before_it(tmp_path):
    path = tmp_path / "demo.csv"
    header = ",".join(COLUMNS)
    path.write_text(
        f"{header}\n"
        "2026-01-02T00:00:00+00:00,bbb,m,demo,speed,80,bare,100,files/s,0.8,>= 0.7,true\n"
        "2026-01-01T00:00:00+00:00,aaa,m,demo,speed,60,bare,100,files/s,0.6,>= 0.7,false\n"
        "2026-01-01T00:00:00+00:00,aaa,m,demo,time,2,read,1,s,2,<= 3,true\n"
    )
    rows = {row["figure"]: row for row in latest_rows(tmp_path)}
    assert rows["speed"]["commit"] == "bbb" and rows["speed"]["previous"] == "0.6"
    assert rows["time"]["previous"] == ""
    table = summary_table(list(rows.values()))
    assert "| demo | speed | 0.8 | >= 0.7 | ok | 0.6 |" in table


def test_a_bench_script_writes_its_rows_and_the_summary_prints_them(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH / "parse_xml.py"), "--files", "300", "--repeats", "1", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(tmp_path / "parse_xml.csv")
    assert [row["figure"] for row in rows] == [
        "parse_corpus throughput",
        "parse_corpus vs the floor",
        "parse_corpus vs lxml from bytes",
    ]
    assert float(rows[0]["ratio"]) == pytest.approx(
        float(rows[0]["value"]) / float(rows[0]["baseline_value"]), rel=1e-3
    )
    shown = subprocess.run(
        [sys.executable, str(BENCH / "summary.py"), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0 and "parse_corpus throughput" in shown.stdout and rows[0]["ratio"] in shown.stdout


def test_every_bench_script_leaves_a_record():
    """A new bench script takes --results and appends its rows like the others (record.py),
    or make bench's summary misses it."""
    scripts = sorted(p for p in BENCH.glob("*.py") if p.name not in ("record.py", "summary.py"))
    assert len(scripts) >= 5
    silent = [p.name for p in scripts if "add_results_option(" not in (text := p.read_text()) or "record(" not in text]
    assert silent == []
