"""Shared fixtures and the marker rules (gpu tests skip without CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA (gpu marker); run on a GPU node")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch) -> Path:
    """A fresh data directory, set as SFTC_DATA_DIR; no .env of the developer leaks in."""
    path = tmp_path / "data"
    path.mkdir()
    monkeypatch.setenv("SFTC_DATA_DIR", str(path))
    monkeypatch.chdir(tmp_path)
    for var in ("EODHD_API_KEY", "TRAIN_START_DATE", "TRAIN_END_DATE", "TEST_START_DATE", "TRAIN_BACKEND", "SFTC_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    return path
