"""Headless Chromium against the real web UI, asserting what a user checks: the graph names every asset and
shows a group per stage, an asset page shows its node class and its automation condition, a partition's page
shows that partition's own row count. A screenshot is saved to logs/browser/asset_graph.png. Run with
`make test-browser` (it installs Debian's chromium)."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest
from orchestration_servers import REPO_ROOT, dagster_server, repository
from orchestration_standins import DESIGN_ASSETS

from sftc_core.io import read_jsonl
from sftc_core.settings import load_settings
from sftc_jobs.chain import Chain, materialize_chain
from sftc_jobs.location import build_definitions
from sftc_platform.metadata import NON_BREAKING_HYPHEN

pytestmark = pytest.mark.browser

SCREENSHOT = REPO_ROOT / "logs" / "browser" / "asset_graph.png"
# The UI fetches over GraphQL after load; virtual time does not advance while fetches are pending.
VIRTUAL_TIME_MS = 60000
STAGE_GROUPS = ("theses", "sft_data", "checkpoints", "training", "evaluation", "backtest", "reports")


def chromium(profile_dir: Path, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium not found: `make test-browser` installs Debian's chromium with apt-get")
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile_dir}",
        "--window-size=1600,1000",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def page_text(dom: str) -> list[str]:
    """The texts of a dumped page, one per element, as a person reads them (a non-breaking hyphen as a hyphen)."""
    body = re.sub(r"<(style|script)\b.*?</\1>", "", dom, flags=re.S)
    return [
        html.unescape(text.strip()).replace(NON_BREAKING_HYPHEN, "-")
        for text in re.split(r"<[^>]+>", body)
        if text.strip()
    ]


def visible(server, tmp_path: Path, path: str) -> list[str]:
    dom = chromium(tmp_path / f"profile-{re.sub(r'[^a-z]+', '-', path)}", "--dump-dom", f"{server.url}{path}")
    assert dom.returncode == 0, dom.stderr[-3000:]
    return page_text(dom.stdout)


def after(texts: list[str], label: str) -> str:
    assert label in texts, f"{label!r} not on the page: {texts[:400]}"
    return texts[texts.index(label) + 1]


def test_what_a_user_checks_in_the_web_ui(tmp_path):
    with dagster_server(tmp_path / "server") as server:
        repository(server)  # the code location has loaded
        # The first two assets, every month in one run, into the server's instance (as `sftc run` does).
        settings = load_settings(env={**os.environ, "SFTC_DATA_DIR": str(server.data_dir)})
        chain = Chain.of(build_definitions(settings), settings)
        with dg.DagsterInstance.from_config(str(server.home)) as instance:
            result = materialize_chain(chain, instance, [dg.AssetKey("raw_xml"), dg.AssetKey("thesis_jsonl")])
        assert result.success and len(result.runs) == 1

        graph = visible(server, tmp_path, "/asset-groups")
        assert set(STAGE_GROUPS) <= set(graph), f"stage groups missing from the graph: {graph[:100]}"

        catalog = visible(server, tmp_path, "/assets")
        missing = sorted(name for name in DESIGN_ASSETS if name not in catalog)
        assert not missing, f"not in the catalog: {missing}"
        # each row: the asset, its kinds (the node class among them), its description, its group
        row = catalog[catalog.index("nemo_model") :]
        assert "gpu" in row[: row.index("training")] and any(
            "Runs on a GPU node" in text for text in row[: row.index("training")]
        )

        sft_model = visible(server, tmp_path, "/assets/sft_model")
        assert "cpu" in sft_model[sft_model.index("Kinds") :][:4], sft_model
        assert any("Runs on the CPU node in the toy profile" in text for text in sft_model)
        raw_xml = visible(server, tmp_path, "/assets/raw_xml")
        assert after(raw_xml, "Automation condition") == "missing_or_stale" and "automation_cpu_node" in raw_xml

        february = visible(server, tmp_path, "/assets/thesis_jsonl?view=partitions&partition=2012-02")
        lines = read_jsonl(server.data_dir / "jsonl" / "2012-02.jsonl")
        total = sum(len(read_jsonl(path)) for path in (server.data_dir / "jsonl").glob("*[0-9].jsonl"))
        assert int(after(february, "dagster/row_count")) == len(lines) < total  # the month's, not the run's
        assert after(february, "path").endswith("2012-02.jsonl") and lines[0]["id"] in february
        assert not any(
            re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) and not text.startswith("2012-02")
            for text in february[february.index("preview") :]
        )

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shot = chromium(tmp_path / "profile-shot", f"--screenshot={SCREENSHOT}", f"{server.url}/asset-groups")
        assert shot.returncode == 0, shot.stderr[-3000:]
        assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and SCREENSHOT.stat().st_size > 10_000
