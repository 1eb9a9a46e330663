"""The floors of the house hold: import-linter's contracts (pyproject.toml), public Dagster only, settings read
at the edges alone, the plain commands running without Dagster, and asset factories that only wire."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sftc_core", "sftc_assets", "sftc_platform", "sftc_jobs")


def _sources() -> dict[Path, str]:
    return {
        path: path.read_text(encoding="utf-8")
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def test_import_contracts_are_kept():
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert "Contracts: 4 kept, 0 broken." in done.stdout


def test_no_private_dagster_anywhere():
    private = re.compile(r"^\s*(from|import)\s+dagster\._", re.MULTILINE)
    found = [
        str(path.relative_to(ROOT))
        for path, text in {**_sources(), **{p: p.read_text() for p in (ROOT / "bench").glob("*.py")}}.items()
        if private.search(text)
    ]
    assert found == []


def test_settings_are_read_only_at_the_edges():
    """`load_settings()` is called by the code location and the command line, nowhere else."""
    calls = sorted(
        str(path.relative_to(ROOT)) for path, text in _sources().items() if re.search(r"\bload_settings\(", text)
    )
    assert calls == ["sftc_core/settings.py", "sftc_jobs/cli.py", "sftc_jobs/definitions.py"]


PLAIN_COMMANDS = """
import sys
from sftc_jobs.cli import build_parser, main

def step(*argv, codes=(0,)):
    code = main(list(argv))
    assert code in codes, (argv, code)
    assert "dagster" not in sys.modules, f"sftc {argv[0]} imported Dagster"

build_parser()
assert "dagster" not in sys.modules, "building the parser imported Dagster"
out = sys.argv[1]
step("make-sample-corpus", "--out", f"{out}/xml", "--tickers", "AAPL,IBM", "--per-month", "3",
     "--start", "2011-01-01", "--end", "2012-12-31")
step("xml-to-jsonl", "--input-dir", f"{out}/xml", "--output", f"{out}/records.jsonl")
step("build-dataset", "--jsonl", f"{out}/records.jsonl", "--out-dir", f"{out}/splits",
     "--validation-days", "60", "--test-days", "90")
step("export-nemo", "--dataset-dir", f"{out}/splits", "--output-dir", f"{out}/nemo", "--skip-tokenizer")
step("make-toy-checkpoint", "--out", f"{out}/fp8", "--fp8", "--corpus", f"{out}/nemo")
step("convert-fp8", "--source", f"{out}/fp8", "--output", f"{out}/bf16", "--no-progress")
step("preflight", "--no-nemo", codes=(0, 1))  # 1: not ready for GPU work, as on this CPU node
step("gpu-check", "--dry-run")
print("no dagster")
"""


def test_the_plain_commands_run_without_dagster(tmp_path, data_dir):
    help_only = (
        "import sys\nfrom sftc_jobs.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\nprint('dagster' in sys.modules)"
    )
    shown = subprocess.run([sys.executable, "-c", help_only], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and shown.stdout.strip().endswith("False"), shown.stderr[-2000:]
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PLAIN_COMMANDS), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.strip().endswith("no dagster")


def test_asset_factories_only_wire():
    """Each stage's `defs(settings)` only decorates and wires: every asset or check body is one `return f(...)` of a
    module-level function, which a test calls directly."""
    bodies, thick = {}, []
    for path in sorted((ROOT / "sftc_assets").glob("*/assets.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        factory = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "defs")
        for node in ast.walk(factory):
            if isinstance(node, ast.FunctionDef) and node is not factory:
                bodies.setdefault(path.parent.name, []).append(node.name)
                (statement,) = node.body if len(node.body) == 1 else (None,)
                if not (isinstance(statement, ast.Return) and isinstance(statement.value, ast.Call)):
                    thick.append(f"{path.parent.name}/assets.py: {node.name}")
    assert thick == []
    assert set(bodies) == {"theses", "sft_data", "checkpoints", "training", "evaluation", "backtest", "reports"}
    assert len(bodies["checkpoints"]) == 5  # base_checkpoint (built or observed), bf16_checkpoint and its two checks
    assert (
        len(bodies["training"]) == 6
    )  # nemo_model, sft_model and their four checks (one only where a profile rehearses LoRA)
