"""Headless Chromium against the real web UI: the asset graph page names every asset; a screenshot is
saved to logs/browser/asset_graph.png. Run with `make test-browser` (it installs Debian's chromium)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from orchestration_servers import REPO_ROOT, dagster_server, repository
from orchestration_standins import DESIGN_ASSETS

pytestmark = pytest.mark.browser

SCREENSHOT = REPO_ROOT / "logs" / "browser" / "asset_graph.png"
# The UI fetches over GraphQL after load; virtual time does not advance while fetches are pending.
VIRTUAL_TIME_MS = 60000


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


def test_asset_graph_page_names_every_asset_and_is_screenshotted(tmp_path):
    with dagster_server(tmp_path / "server") as server:
        repository(server)  # the code location has loaded
        url = f"{server.url}/locations/sftc/asset-groups/default"
        dom = chromium(tmp_path / "profile-dom", "--dump-dom", url)
        assert dom.returncode == 0, dom.stderr[-3000:]
        missing = sorted(name for name in DESIGN_ASSETS if name not in dom.stdout)
        assert not missing, f"not on the asset graph page: {missing}"

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shot = chromium(tmp_path / "profile-shot", f"--screenshot={SCREENSHOT}", url)
        assert shot.returncode == 0, shot.stderr[-3000:]
        assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and SCREENSHOT.stat().st_size > 10_000
