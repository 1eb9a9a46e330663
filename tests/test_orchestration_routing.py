"""Node routing: compute class -> node class per profile, the Kubernetes tags from configs/cluster.yaml,
and that dagster-k8s's own parsing turns a GPU asset's tags into a pod spec asking for the GPUs."""

from __future__ import annotations

import json

import pytest
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from sftc_core.configs import ConfigError, load_cluster_config, load_profile
from sftc_core.settings import load_settings
from sftc_platform.routing import (
    GPU_POOL,
    GPU_RESOURCE,
    K8S_CONFIG_TAG,
    NODE_TAG,
    asset_placement,
    node_class,
    node_tags,
    run_tags,
)


def _settings(profile: str):
    return load_settings(env={"SFTC_PROFILE": profile})


def _pod_spec(tags: dict[str, str]):
    """The pod spec the Kubernetes run launcher / step-per-pod executor would build from these tags."""
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(
            job_image="sftc:test", dagster_home="/opt/dagster/dagster_home", instance_config_map="dagster-instance"
        ),
        args=["dagster", "api", "execute_run"],
        job_name="dagster-run-test",
        user_defined_k8s_config=get_user_defined_k8s_config(tags),
    )
    return job.spec.template.spec


@pytest.mark.parametrize(
    ("compute_class", "profile", "expected"),
    [
        ("cpu", "toy", "cpu"),
        ("cpu", "full", "cpu"),
        ("gpu", "toy", "gpu"),
        ("gpu", "full", "gpu"),
        ("auto", "toy", "cpu"),
        ("auto", "full", "gpu"),
    ],
)
def test_node_class_per_profile(compute_class, profile, expected):
    assert node_class(compute_class, load_profile(profile)) == expected


def test_auto_follows_the_profile_checkpoint_size_against_the_cpu_limit():
    for name in ("toy", "full"):
        compute = load_profile(name).compute
        assert (node_class("auto", load_profile(name)) == "gpu") == (
            compute.expected_checkpoint_bytes > compute.cpu_max_checkpoint_bytes
        )


def test_unknown_compute_class_is_refused():
    with pytest.raises(ValueError, match="compute class 'tpu'"):
        node_class("tpu", load_profile("toy"))


def test_gpu_asset_placement_parses_into_a_pod_spec_with_the_gpu_limit():
    placement = asset_placement("auto", _settings("full"))
    assert placement["pool"] == GPU_POOL and placement["metadata"] == {"compute_class": "auto", "node": "gpu"}
    assert placement["tags"] == {NODE_TAG: "gpu"}  # the asset tag the graph, the catalog and the sensors read
    op_tags = placement["op_tags"]
    assert op_tags[NODE_TAG] == "gpu"
    cluster = load_cluster_config()
    spec = _pod_spec(op_tags)
    container = spec.containers[0]
    assert container.resources.limits[GPU_RESOURCE] == str(cluster.node_pools.gpu.gpus)
    assert container.resources.requests[GPU_RESOURCE] == str(cluster.node_pools.gpu.gpus)
    assert spec.node_selector == cluster.node_pools.gpu.node_selector
    assert [(t.key, t.operator, t.effect) for t in spec.tolerations] == [
        (t.key, t.operator, t.effect) for t in cluster.node_pools.gpu.tolerations
    ]


def test_cpu_placement_has_no_gpu_and_lands_on_the_cpu_pool():
    placement = asset_placement("auto", _settings("toy"))
    assert placement["pool"] is None and placement["op_tags"][NODE_TAG] == "cpu"
    spec = _pod_spec(placement["op_tags"])
    assert GPU_RESOURCE not in (spec.containers[0].resources.limits or {})
    assert spec.node_selector == load_cluster_config().node_pools.cpu.node_selector


def test_run_tags_are_strings_dagster_k8s_accepts():
    tags = node_tags("gpu", load_cluster_config())
    assert all(isinstance(v, str) for v in tags.values())
    assert json.loads(tags[K8S_CONFIG_TAG])["container_config"]["resources"]["limits"][GPU_RESOURCE]


def test_run_tags_carry_the_kubernetes_blob_only_where_kubernetes_places_runs():
    cluster = load_cluster_config()
    assert run_tags("gpu", "none", cluster) == {NODE_TAG: "gpu"}
    assert run_tags("gpu", "run", cluster) == node_tags("gpu", cluster)
    # a pod per step: the run's own pod orchestrates on the CPU pool, the queue still sees a GPU run
    step = run_tags("gpu", "step", cluster)
    assert step[NODE_TAG] == "gpu" and step[K8S_CONFIG_TAG] == node_tags("cpu", cluster)[K8S_CONFIG_TAG]


def test_cluster_config_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "cluster.yaml"
    bad.write_text("node_pools:\n  cpu: {}\n  gpu: {gpus: many}\n")
    with pytest.raises(ConfigError, match=r"cluster.yaml: field 'node_pools.gpu.gpus'"):
        load_cluster_config(bad)
    bad.write_text("node_pools:\n  cpu: {}\n  gpu: {gpus: 0}\n")
    with pytest.raises(ConfigError, match=r"node_pools.gpu.gpus' must be at least 1"):
        load_cluster_config(bad)
    bad.write_text("node_pools:\n  cpu: {}\n  gpu: {gpus: 1, tolerations: [{key: x, effect: Sometimes}]}\n")
    with pytest.raises(ConfigError, match=r"node_pools.gpu.tolerations.0.effect"):
        load_cluster_config(bad)
