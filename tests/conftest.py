"""Shared fixtures and the marker rules (gpu tests skip without CUDA)."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
    for var in (
        "EODHD_API_KEY",
        "TRAIN_START_DATE",
        "TRAIN_END_DATE",
        "TEST_START_DATE",
        "TRAIN_BACKEND",
        "SFTC_PROFILE",
    ):
        monkeypatch.delenv(var, raising=False)
    return path


@pytest.fixture(scope="module")
def cli_chain(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """The command-line chain on a small corpus (tests/safety_helpers.py), built once per module that asks for it."""
    from safety_helpers import build_cli_chain

    cwd = os.getcwd()
    try:
        yield build_cli_chain(tmp_path_factory.mktemp("cli-chain"))
    finally:
        os.chdir(cwd)


@pytest.fixture
def kubernetes_cluster(tmp_path: Path, monkeypatch):
    """A stand-in Kubernetes API on 127.0.0.1 that KUBECONFIG names (tests/kubernetes_api.py)."""
    from kubernetes_api import serve

    yield from serve(tmp_path, monkeypatch)
