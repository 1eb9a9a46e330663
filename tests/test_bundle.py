"""`sftc bundle`: the reports, eval CSVs, configs, settings, markers and bench CSVs in one archive with a manifest of
hashes; never weights, checkpoints or .env, and no file holding an API key (tested with a sentinel key planted in a
log). The whole chain's bundle is checked in tests/test_secrets_leak.py's slow test."""

from __future__ import annotations

import hashlib
import json
import tarfile
import uuid
import zipfile

import pytest

from sftc_assets.reports import bundle
from sftc_core.io import atomic_write_text
from sftc_core.settings import load_settings
from sftc_jobs.cli import main
from sftc_jobs.commands.outputs import command_stamp


def _members(path) -> dict[str, bytes]:
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    with tarfile.open(path, "r:gz") as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}


@pytest.fixture
def sentinel(data_dir, monkeypatch):
    """A data directory as a run leaves it (written by hand: the chain's own bundle is the slow test's), with the
    API keys set to a sentinel and the sentinel planted in one step log and a .env beside it."""
    key = f"sftc-sentinel-{uuid.uuid4().hex}"
    monkeypatch.setenv("EODHD_API_KEY", key)
    monkeypatch.setenv("SFTC_EVAL_API_KEY", key)
    (data_dir.parent / ".env").write_text(f"EODHD_API_KEY={key}\n")
    files = {
        "reports/validation_report.md": "# CPU validation report\n",
        "reports/validation_report.json": "{}\n",
        "reports/gpu_check.md": "# GPU check\n",
        "reports/gpu_check.json": '{"passed": true}\n',
        "gpu_check/logs/cuda.log": "1 x H100\n",
        "gpu_check/logs/nemo.log": f"GET /api?api_token={key} 200\n",
        "backtest/report.md": "# Backtest\n",
        "backtest/metrics.json": "{}\n",
        "eval/2012-09.csv": "id,ticker\n1,AAPL\n",
        "eval/.staging/2012-10.jsonl": "{}\n",
        "models/sft/metrics.json": '{"steps": 3}\n',
        "models/sft/training.csv": "step,loss\n1,2.0\n",
    }
    for name, text in files.items():
        atomic_write_text(data_dir / name, text)
    (data_dir / "models" / "sft" / "model.safetensors").write_bytes(b"\x00" * 64)
    (data_dir / "checkpoints" / "bf16").mkdir(parents=True)
    (data_dir / "checkpoints" / "bf16" / "model.safetensors").write_bytes(b"\x00" * 64)
    return key


def test_the_bundle_holds_what_a_reviewer_needs_with_their_hashes_and_no_secret(
    sentinel, data_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # `make test` exports the repository's own instance
    out = tmp_path / "review.tar.gz"
    assert main(["bundle", "--out", str(out)]) == 0
    members = _members(out)
    assert not any(sentinel.encode() in data for data in members.values()) and sentinel.encode() not in out.read_bytes()
    names = set(members)
    assert {
        "reports/validation_report.md",
        "reports/gpu_check.json",
        "gpu_check/logs/cuda.log",
        "backtest/report.md",
        "eval/2012-09.csv",
        "models/sft/metrics.json",
        "models/sft/training.csv",
        "configs/gpu_check.yaml",
        "configs/nemo/finetune.yaml",
        "settings.json",
        "artifacts.json",
        "MANIFEST.json",
        "SHA256SUMS",
    } <= names
    assert not [
        n for n in names if n.endswith(".safetensors") or n.endswith(".env") or "staging" in n or "checkpoints" in n
    ]
    manifest = json.loads(members["MANIFEST.json"])
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == names - {"MANIFEST.json", "SHA256SUMS"}
    assert all(
        hashlib.sha256(members[n]).hexdigest() == f["sha256"] and len(members[n]) == f["bytes"]
        for n, f in listed.items()
    )
    assert (
        members["SHA256SUMS"].decode().splitlines()[0]
        == f"{manifest['files'][0]['sha256']}  {manifest['files'][0]['path']}"
    )
    left = {entry["path"]: entry["reason"] for entry in manifest["left_out"]}
    assert left == {
        "gpu_check/logs/nemo.log": "it contains the value of EODHD_API_KEY",
        "models/sft/model.safetensors": "weights or a binary the bundle never carries",
    }
    settings = json.loads(members["settings.json"])
    assert (
        settings["eodhd_api_key"] == settings["eval_api_key"] == "set (not shown)"
        and settings["profile"]["name"] == "toy"
    )
    assert any(m.startswith("run_manifests.json: no Dagster instance") for m in manifest["missing"])
    captured = capsys.readouterr()
    assert "left out gpu_check/logs/nemo.log: it contains the value of EODHD_API_KEY" in captured.err
    assert json.loads(captured.out)["files"] == len(listed)


def test_artifact_markers_name_what_wrote_each_artifact(sentinel, data_dir, tmp_path):
    settings = load_settings()
    target = settings.paths.reports / "validation_report.md"
    command_stamp(type("Args", (), {"command": "test"})())(target, target)  # marked as if an sftc command wrote it
    rows = {(r["asset"], r["path"]): r for r in bundle.artifact_markers(settings)}
    marked = rows[("validation_report", str(target))]
    assert marked["writer"] == "sftc test" and list(marked["files"]) == ["validation_report.md"]
    unmarked = rows[("validation_report", str(settings.paths.reports / "validation_report.json"))]
    assert unmarked["exists"] and unmarked["marker"].startswith("none (")
    assert rows[("sft_model", str(settings.paths.sft_model))]["exists"]


def test_zip_works_a_wrong_name_fails_first_and_an_unmarked_file_is_not_replaced(sentinel, tmp_path, capsys):
    assert main(["bundle", "--out", str(tmp_path / "review.zip")]) == 0
    assert "MANIFEST.json" in _members(tmp_path / "review.zip")
    assert main(["bundle", "--out", str(tmp_path / "review.rar")]) == 2
    assert (
        "--out " + str(tmp_path / "review.rar") + ": expected a file name ending in .tar.gz, .tgz, .zip"
        in capsys.readouterr().err
    )
    (tmp_path / "mine.tar.gz").write_bytes(b"someone else's")
    assert main(["bundle", "--out", str(tmp_path / "mine.tar.gz")]) == 2
    assert (tmp_path / "mine.tar.gz").read_bytes() == b"someone else's"
    assert main(["bundle", "--out", str(tmp_path / "mine.tar.gz"), "--force"]) == 0
    assert "MANIFEST.json" in _members(tmp_path / "mine.tar.gz")
