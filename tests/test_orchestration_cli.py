"""`sftc run` and `sftc rerun` through a real DAGSTER_HOME (set up from configs/dagster.yaml), over the
stand-in chain: what the terminal shows (a line as each asset starts and ends, the summary table with its
checks, the reports; Dagster's event stream in the log file only), a second run that redoes nothing, a failure
as one block, and clear errors for bad windows. (What a window re-run replaces: test_orchestration_chain.py;
on the real toy chain: test_orchestration_toy_chain.py, slow.)"""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pytest
from orchestration_standins import CHAIN, standin_stages

from sftc_jobs import location
from sftc_jobs.cli import main


@pytest.fixture
def standin_location(monkeypatch):
    """`sftc run` builds the code location from its stages: here they are the stand-in chain's."""
    monkeypatch.setattr(location, "STAGES", tuple(standin_stages()))


def _log_file(tmp_path) -> Path:
    (log,) = (tmp_path / "logs").glob("sftc-*.log")
    return log


def _rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and (cells[0] in CHAIN or cells[0] == "validation_report"):
            rows[cells[0]] = cells
    return rows


def test_run_twice_second_redoes_nothing(data_dir, tmp_path, monkeypatch, capsys, standin_location):
    home = tmp_path / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert main(["run"]) == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert (home / "dagster.yaml").is_file()  # set up from configs/dagster.yaml
    rows = _rows(out)
    assert set(rows) == (set(CHAIN) - {"nemo_model"}) | {"validation_report"}
    assert rows["raw_xml"][1] == "materialized 2012-01..2012-12" and rows["raw_xml"][2].startswith(
        "12 (2012-01..2012-12)"
    )
    # asset | this run | partitions | checks | last materialized | files (relative to the working directory)
    assert rows["hf_splits"][1] == "materialized" and rows["hf_splits"][5] == "data/hf_splits"
    assert rows["thesis_jsonl"][3] == "1/1 passed" and rows["hf_splits"][3] == ""
    assert "Validation report: data/reports/validation_report.md (ready for GPU: " in out
    assert "Backtest report:" in out
    # The terminal: each asset as it starts and as it ends, with its partitions; no event of Dagster's.
    lines = err.splitlines()
    assert "  raw_xml 2012-01..2012-12 ..." in lines and "  eval_csv 2012-09..2012-12 ..." in lines
    assert any(re.fullmatch(r"  thesis_jsonl 2012-01\.\.2012-12 done in \d+\.\d s", line) for line in lines), err
    assert sum(" done in " in line for line in lines) == len(rows)
    assert "DEBUG" not in err + out and "STEP_START" not in err + out and "alembic" not in err + out
    # ... while the log file has Dagster's whole event stream (and alembic's lines).
    log = _log_file(tmp_path).read_text()
    assert "STEP_START" in log and "ASSET_MATERIALIZATION" in log and "alembic" in log

    instance = dg.DagsterInstance.get()
    runs_after_first = len(instance.get_runs())
    assert main(["run"]) == 0
    captured = capsys.readouterr()
    rows = _rows(captured.out)
    assert {cells[1] for cells in rows.values()} == {"up to date"}
    assert len(instance.get_runs()) == runs_after_first
    assert "nothing to do: every asset is up to date" in captured.out
    # The header, the table, the reports: that is all a run that does nothing prints.
    assert len((captured.out + captured.err).splitlines()) <= len(rows) + 7


def test_a_failed_run_ends_in_one_block_with_the_cause_and_the_log_file(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(location, "STAGES", tuple(standin_stages(failing={"sft_model"})))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    assert main(["run"]) == 1
    captured = capsys.readouterr()
    rows = _rows(captured.out)
    assert (
        rows["nemo_jsonl"][1] == "materialized"
        and rows["sft_model"][1] == "FAILED"
        and rows["eval_csv"][1] == "not reached"
    )
    block = captured.err[captured.err.index("FAILED: sft_model") :].splitlines()
    assert block[0] == "FAILED: sft_model" + block[0].removeprefix("FAILED: sft_model") and block[0].endswith(" s)")
    assert block[1] == "  cause: sft_model stand-in told to fail"  # the message itself, not Dagster's wrapper
    assert block[2].startswith("  run ") and block[2].endswith(
        f"; details: {_log_file(tmp_path).relative_to(tmp_path)}"
    )
    assert "Traceback" not in captured.err and "DagsterExecutionStepExecutionError" not in captured.err
    assert (
        'raise RuntimeError(f"{name} stand-in told to fail")' in _log_file(tmp_path).read_text()
    )  # the stack trace: in the log file


def test_rerun_refuses_a_bad_window(data_dir, tmp_path, monkeypatch, capsys, standin_location):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    assert main(["rerun", "--from", "2012-13", "--to", "2012-14"]) == 2
    assert "--from '2012-13': expected a month written YYYY-MM" in capsys.readouterr().err
    assert main(["rerun", "--from", "2030-01", "--to", "2030-02"]) == 2
    assert "no monthly partition of this profile lies in that window" in capsys.readouterr().err
