"""The deployment files: deploy/dagster.yaml is a valid instance config for Dagster and dagster-k8s,
and it, deploy/values.yaml (Helm) and configs/dagster.yaml agree on the GPU limits and node pools."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s import K8sRunLauncher

from sftc_core.configs import ConfigError, load_cluster_config
from sftc_core.settings import load_settings
from sftc_platform.routing import DATA_DIR_TAG, NODE_TAG

REPO_ROOT = Path(__file__).resolve().parent.parent
GPU_RUN_LIMIT = {"key": NODE_TAG, "value": "gpu", "limit": 1}
DATA_DIR_LIMIT = {"key": DATA_DIR_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
RUN_LIMITS = [GPU_RUN_LIMIT, DATA_DIR_LIMIT]
DEPLOY_ENV = {
    "DAGSTER_PG_HOST": "postgres",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "secret-from-kubernetes",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_K8S_NAMESPACE": "sftc",
}


def _instance_config(path: Path, tmp_path: Path) -> dict:
    shutil.copy(path, tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))  # Dagster's own schema validation
    return config


def test_deploy_dagster_yaml_is_a_valid_instance_and_k8s_launcher_config(tmp_path, monkeypatch):
    for name, value in DEPLOY_ENV.items():
        monkeypatch.setenv(name, value)
    config = _instance_config(REPO_ROOT / "deploy" / "dagster.yaml", tmp_path)
    assert "postgres_db" in config["storage"]["postgres"]
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    result = validate_config(K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, [e.message for e in result.errors]
    assert config["concurrency"]["runs"]["tag_concurrency_limits"] == RUN_LIMITS
    assert config["concurrency"]["pools"]["default_limit"] == 1


def test_local_instance_has_the_same_gpu_limits(tmp_path):
    config = _instance_config(REPO_ROOT / "configs" / "dagster.yaml", tmp_path)
    assert config["concurrency"]["runs"]["tag_concurrency_limits"] == RUN_LIMITS
    assert config["concurrency"]["pools"]["default_limit"] == 1


def test_helm_values_match_the_code_location_and_the_node_pools():
    values = yaml.safe_load((REPO_ROOT / "deploy" / "values.yaml").read_text())
    deployments = {d["name"]: d for d in values["dagster-user-deployments"]["deployments"]}
    cpu_pool = load_cluster_config().node_pools.cpu.node_selector
    for deployment in deployments.values():
        assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "sftc_jobs.definitions"]
        env = {e["name"]: e["value"] for e in deployment["env"]}
        assert load_settings(env=env).k8s_placement in ("run", "step")  # a profile that exists, a valid placement
        assert deployment["nodeSelector"] == cpu_pool
    assert {e["name"]: e["value"] for e in deployments["sftc"]["env"]}["SFTC_K8S_PLACEMENT"] == "step"
    assert {e["name"]: e["value"] for e in deployments["sftc-validation"]["env"]}["SFTC_PROFILE"] == "toy"
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert (
        values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]["nodeSelector"] == cpu_pool
    )
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queue["tagConcurrencyLimits"] == RUN_LIMITS
    assert values["additionalInstanceConfig"]["concurrency"]["pools"]["default_limit"] == 1


def test_placement_mode_is_validated():
    assert load_settings(env={}).k8s_placement == "none"  # one machine unless a deployment says otherwise
    assert load_settings(env={"SFTC_K8S_PLACEMENT": "STEP"}).k8s_placement == "step"
    with pytest.raises(ConfigError, match="SFTC_K8S_PLACEMENT='pod'"):
        load_settings(env={"SFTC_K8S_PLACEMENT": "pod"})
