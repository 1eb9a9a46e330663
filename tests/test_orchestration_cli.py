"""`sftc run` and `sftc rerun` through a real DAGSTER_HOME (set up from configs/dagster.yaml), over the
stand-in chain: the summary table, the report paths, a second run that redoes nothing, and clear errors
for bad windows. (What a window re-run replaces: test_orchestration_chain.py; on the real toy chain:
test_orchestration_toy_chain.py, slow.)"""

from __future__ import annotations

import dagster as dg
import pytest
from orchestration_standins import CHAIN, standin_stages

from sftc_jobs import location
from sftc_jobs.cli import main


@pytest.fixture
def standin_location(monkeypatch):
    """`sftc run` builds the code location from its stages: here they are the stand-in chain's."""
    monkeypatch.setattr(location, "STAGES", tuple(standin_stages()))


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
    out = capsys.readouterr().out
    assert (home / "dagster.yaml").is_file()  # set up from configs/dagster.yaml
    rows = _rows(out)
    assert set(rows) == (set(CHAIN) - {"nemo_model"}) | {"validation_report"}
    assert rows["raw_xml"][1] == "materialized 2012-01..2012-12" and rows["raw_xml"][2].startswith("12 (2012-01..2012-12)")
    assert rows["hf_splits"][1] == "materialized" and rows["hf_splits"][4] == str(data_dir / "hf_splits")
    assert f"Validation report: {data_dir / 'reports' / 'validation_report.md'}\n" in out
    assert "Backtest report:" in out

    instance = dg.DagsterInstance.get()
    runs_after_first = len(instance.get_runs())
    assert main(["run"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert {cells[1] for cells in rows.values()} == {"up to date"}
    assert len(instance.get_runs()) == runs_after_first


def test_rerun_refuses_a_bad_window(data_dir, tmp_path, monkeypatch, capsys, standin_location):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    assert main(["rerun", "--from", "2012-13", "--to", "2012-14"]) == 2
    assert "--from '2012-13': expected a month written YYYY-MM" in capsys.readouterr().err
    assert main(["rerun", "--from", "2030-01", "--to", "2030-02"]) == 2
    assert "no monthly partition of this profile lies in that window" in capsys.readouterr().err


def test_a_failed_run_prints_its_first_error(data_dir, tmp_path, monkeypatch, capsys):
    """`sftc run` stops at the first failed run and says what failed there, not only that it did."""
    monkeypatch.setattr(location, "STAGES", tuple(standin_stages(failing=("sft_model",))))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    assert main(["run"]) == 1
    out = capsys.readouterr().out
    failed = out[out.index("\nFAILED: run "):]
    assert "(hf_splits, base_checkpoint, bf16_checkpoint, nemo_jsonl, sft_model)" in failed
    assert "  sft_model: RuntimeError: sft_model stand-in told to fail" in failed
