"""The command-line chain on a small corpus, run once per test module: the artifacts the safety tests aim
the commands at (paths, inputs, errors)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from sftc_jobs.cli import main


def build_cli_chain(root: Path) -> dict[str, Path]:
    """xml -> records.jsonl -> splits -> nemo -> fp8 -> bf16 under `root`, each made by its `sftc` command."""
    os.chdir(root)  # the CLI's log file goes under ./logs
    paths = {name: root / name for name in ("xml", "records.jsonl", "splits", "nemo", "fp8", "bf16")}
    steps = [
        [
            "make-sample-corpus",
            "--out",
            paths["xml"],
            "--tickers",
            "AAPL,IBM",
            "--per-month",
            "3",
            "--start",
            "2011-01-01",
            "--end",
            "2012-12-31",
        ],
        ["xml-to-jsonl", "--input-dir", paths["xml"], "--output", paths["records.jsonl"]],
        [
            "build-dataset",
            "--jsonl",
            paths["records.jsonl"],
            "--out-dir",
            paths["splits"],
            "--validation-days",
            "60",
            "--test-days",
            "90",
        ],
        ["export-nemo", "--dataset-dir", paths["splits"], "--output-dir", paths["nemo"], "--skip-tokenizer"],
        ["make-toy-checkpoint", "--out", paths["fp8"], "--fp8", "--corpus", paths["nemo"]],
        ["convert-fp8", "--source", paths["fp8"], "--output", paths["bf16"], "--no-progress"],
    ]
    for argv in steps:
        assert main([str(a) for a in argv]) == 0, argv
    return paths


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under `path` (or `path` itself) by relative path, with its SHA-256: what "intact" means."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {
        str(p.relative_to(path.parent if path.is_file() else path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
    }


def without_root_privileges() -> list[str]:
    """The prefix that runs a command without the privilege of reading what its mode forbids: as root,
    `setpriv` drops the capabilities that bypass file permissions (a permission test is then real)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "running as root: the permission tests need util-linux's setpriv to drop CAP_DAC_OVERRIDE"
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def sftc_process(argv: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`sftc ARGV` as a fresh process without root's file privileges (see `without_root_privileges`)."""
    command = [*without_root_privileges(), sys.executable, "-m", "sftc_jobs.cli", *map(str, argv)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
