"""`sftc preflight`: this node's checklist against configs/nemo/finetune.yaml, the base checkpoint and disk, then the
GPU plan (its own tests: test_training_gpu_plan.py); each item names the machine it speaks of."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from checkpoints_helpers import awkward_checkpoint

from sftc_assets.checkpoints.convert import plan_conversion
from sftc_assets.training.preflight import run_preflight
from sftc_core.checks import GPU_PLAN, TARGET_CLUSTER, THIS_NODE, TOY_CHAIN
from sftc_core.gpu import GpuDevice, GpuProbe
from sftc_core.settings import load_settings
from sftc_jobs.cli import main as sftc_main

GIB = 1 << 30


def _probe(count: int, memory_gib: float = 80, triton_fp8: bool = True) -> GpuProbe:
    devices = tuple(GpuDevice(i, "NVIDIA H100 80GB HBM3", int(memory_gib * GIB), (9, 0)) for i in range(count))
    fp8 = triton_fp8 and bool(devices)
    return GpuProbe(
        bool(devices),
        devices,
        "2.13.0",
        "12.8",
        "3.4.0",
        fp8,
        "Triton FP8 kernel verified" if fp8 else "Triton refused FP8",
    )


@pytest.fixture
def fake_nemo(tmp_path, monkeypatch) -> Path:
    """An interpreter standing in for the NeMo environment's: answers the import probe with a version."""
    python = tmp_path / "nemo-python"
    python.write_text("#!/bin/sh\necho 2.7.3\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("SFTC_NEMO_PYTHON", str(python))
    return python


def _status(report, scope: str | None = THIS_NODE) -> dict[str, str]:
    return {item.name: item.status for item in report.checks if scope is None or item.scope == scope}


def test_ready_node_passes_every_item(data_dir, fake_nemo):
    source = awkward_checkpoint(data_dir / "checkpoints" / "base_fp8")
    report = run_preflight(load_settings(), probe=_probe(8))
    status = _status(report)
    assert report.ready, report.table()
    assert status == {
        "finetune config": "PASS",
        "cuda": "PASS",
        "gpus": "PASS",
        "triton fp8": "PASS",
        "base checkpoint": "PASS",
        "disk": "PASS",
    }
    items = {item.name: item for item in report.checks}
    assert items["NeMo environment"].status == "PASS" and "NeMo 2.7.3" in items["NeMo environment"].found
    assert {c.scope for c in report.checks} == {THIS_NODE, GPU_PLAN, TARGET_CLUSTER, TOY_CHAIN}
    assert report.checks[len(status) :] == report.plan.checks  # this node's items, then the GPU plan's
    from sftc_core.gpu import format_bytes

    assert format_bytes(plan_conversion(source).total_size) in items["base checkpoint"].found  # the exact BF16 size


def test_a_node_short_of_gpus_is_not_ready_and_says_why(data_dir, fake_nemo):
    report = run_preflight(load_settings(), probe=_probe(4, memory_gib=40, triton_fp8=False))
    status = _status(report)
    assert not report.ready
    assert status["gpus"] == "FAIL" and status["cuda"] == "PASS" and status["triton fp8"] == "WARN"
    gpus = next(item for item in report.checks if item.name == "gpus")
    assert "8 GPU(s) x 74.5 GiB" in gpus.needed and "0 of 4" in gpus.found and "gpus_per_node" in gpus.fix
    assert "NOT READY: gpus (this node)" in report.table()
    assert report.plan.passed  # the plan holds whatever this node has: the two verdicts say different things


def test_no_cuda_fails_and_a_broken_base_checkpoint_is_named(data_dir, fake_nemo):
    source = awkward_checkpoint(data_dir / "checkpoints" / "base_fp8")
    (source / "model-00003-of-00004.safetensors").unlink()
    report = run_preflight(load_settings(), probe=_probe(0))
    status = _status(report)
    assert status["cuda"] == "FAIL" and status["triton fp8"] == "NOT CHECKED" and status["base checkpoint"] == "FAIL"
    base = next(item for item in report.checks if item.name == "base checkpoint")
    assert "model-00003-of-00004.safetensors" in base.found


def test_missing_nemo_interpreter_and_no_gpu_requirement(data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("SFTC_NEMO_PYTHON", str(tmp_path / "nowhere" / "python"))
    report = run_preflight(load_settings(), probe=_probe(8))
    nemo = next(item for item in report.checks if item.name == "NeMo environment")
    assert nemo.status == "NOT CHECKED" and "not on this node" in nemo.found and "make .venv-nemo" in nemo.fix
    cpu_only = run_preflight(load_settings(), require_gpu=False)
    assert _status(cpu_only)["gpu"] == "NOT CHECKED"
    assert cpu_only.ready  # toy profile on a CPU node: the base checkpoint is only a warning until built
    assert _status(cpu_only)["base checkpoint"] == "WARN"


def test_cli_prints_json_and_exits_nonzero_when_not_ready(data_dir, capsys, monkeypatch):
    code = sftc_main(["preflight", "--json", "--no-nemo"])
    report = json.loads(capsys.readouterr().out)
    assert code == (0 if report["ready"] else 1) == 0  # the toy profile on a CPU node with a GPU plan that holds
    checks = [item["name"] for item in report["checks"]]
    assert checks[:2] == ["finetune config", "gpu"] and "disk" in checks and "GPU memory" in checks
    assert {"name", "scope", "status", "needed", "found", "fix", "details"} <= set(report["checks"][0])
    assert sftc_main(["preflight", "--no-nemo"]) == code
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["check", "scope", "status", "found"]
    assert table.rstrip().endswith("READY")

    monkeypatch.setenv("SFTC_PROFILE", "full")  # on this CPU node the full profile's GPU items fail, and say so
    assert sftc_main(["preflight", "--json", "--no-nemo"]) == 1
    full = json.loads(capsys.readouterr().out)
    failed = {(c["name"], c["scope"]) for c in full["checks"] if c["status"] == "FAIL"}
    assert ("cuda", "this node") in failed and all(scope == "this node" for _, scope in failed)


def test_the_table_wraps_long_rows_under_their_own_column_and_loses_no_word():
    from sftc_core.checks import FAIL, PASS, Check, checks_table

    long_found = " ".join(f"word{i}" for i in range(60))
    long_fix = "set slurm.partition in configs/cluster.yaml to the GPU partition " * 4
    checks = [
        Check("short", THIS_NODE, PASS, "a", "fine"),
        Check("long one", GPU_PLAN, FAIL, "b " * 50, long_found, long_fix),
    ]
    table = checks_table(checks, width=80)
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 80 and len(lines) > 6  # wrapped, not cut
    column = lines[0].index("found")
    rows = [line for line in lines[2:] if not line[:column].strip()]  # continuation lines start in the found column
    assert rows and all(line[column:].strip() for line in rows)
    start = next(i for i, line in enumerate(lines) if line.startswith("long one"))
    needed = next(i for i, line in enumerate(lines) if line[column:].startswith("needed: "))
    assert needed - start > 1 and all(line[column] != " " for line in lines[start + 1 : needed])  # found's own lines
    words = " ".join(line[column:] for line in lines[2:]).split()
    assert words[words.index("fine") + 1 : words.index("fine") + 61] == long_found.split()  # every word, in order
    assert " ".join(words).count("set slurm.partition in configs/cluster.yaml") == 4
