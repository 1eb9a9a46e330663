"""A launched job that cannot start says so at once: Slurm's pending reasons and Kubernetes' scheduling events sorted
into those that clear by themselves (the wait goes on, shown with its reason) and those that never do (the job is
cancelled, the failure names what to change); the Kubernetes launcher against a stand-in API server over real HTTP
(tests/kubernetes_api.py): refused before the JobSet is created, cancelled on an untolerated taint, shown waiting
for busy GPUs until its pods run, cancelled past launch.max_pending. The real Slurm cases are in test_launch_slurm.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml
from kubernetes_api import node, pod
from launch_helpers import launch_of

from sftc_assets.training import nemo_runner
from sftc_core.configs import ConfigError, load_finetune_config, load_profile
from sftc_core.launch import EntryStep
from sftc_core.settings import load_settings
from sftc_platform.launchers import jobs, k8s, slurm, targets
from sftc_platform.launchers.plan import LaunchError

GPU_LABELS = dict(load_settings().cluster.node_pools.gpu.node_selector)
# The scheduler's FailedScheduling messages, as Kubernetes 1.30 writes them.
BUSY = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: 0/2 nodes are available: 2 No victims."
TAINTED = "0/2 nodes are available: 2 node(s) had untolerated taint {dedicated: training}. preemption: not helpful."


def gpu_step(nodes: int = 2) -> EntryStep:
    return EntryStep("finetune", "sftc_assets.training.hf_entry", (), "sftc", nodes, 8, 8, distributed=True)


def gpu_nodes(count: int, gpus: int = 8, memory: str = "2Ti") -> list[dict]:
    return [node(f"gpu-{i}", GPU_LABELS, gpus, memory) for i in range(count)]


def k8s_launch(max_pending: str | None = None):
    return launch_of("k8s", kubernetes={"poll_seconds": 0.05}, max_pending=max_pending)


# --- Slurm's reasons ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reason, fix",
    [
        ("PartitionNodeLimit", "launch.nodes"),
        ("PartitionConfig", "launch.time_limit 00:30:00 in"),
        ("PartitionTimeLimit", "lower launch.time_limit in"),
        ("InvalidAccount", "set slurm.account in configs/cluster.yaml"),
        ("InvalidQOS", "set slurm.qos in configs/cluster.yaml"),
        ("AccountNotAllowed", "slurm.account or slurm.partition"),
        ("QOSMaxNodePerJobLimit", "another slurm.qos or slurm.account"),
        ("AssocMaxNodesPerJob", "another slurm.qos or slurm.account"),
        ("QOSMaxWallDurationPerJobLimit", "launch.time_limit 00:30:00"),
        ("QOSMinGRES", "another slurm.qos"),
        ("BadConstraints", "--constraint in slurm.sbatch_options"),
    ],
)
def test_slurm_reasons_that_never_clear_name_the_fix(reason, fix):
    waiting = slurm.pending_reason(reason, gpu_step(), launch_of("slurm", partition="gpu", account="llm", qos="high"))
    assert waiting.reason == reason and not waiting.clears and fix in waiting.fix and waiting.meaning


@pytest.mark.parametrize(
    "reason, words",
    [
        ("Resources", "busy with other jobs"),
        ("Priority", "higher priority"),
        ("BeginTime", "start time"),
        ("Dependency", "another job"),
        ("None", "not looked at it yet"),
        ("QOSGrpGRES", "aggregate limit"),
        ("AssocGrpNodeLimit", "aggregate limit"),
        ("QOSMaxJobsPerUserLimit", "aggregate limit"),
        ("SomeReasonOfTomorrow", "squeue(1)"),
    ],
)
def test_slurm_reasons_that_clear_keep_the_wait(reason, words):
    waiting = slurm.pending_reason(reason, gpu_step(), launch_of("slurm"))
    assert waiting.clears and words in waiting.meaning


def test_a_reason_slurm_writes_as_a_sentence_is_shown_as_it_is():
    said = "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions"
    waiting = slurm.pending_reason(said, gpu_step(), launch_of("slurm"))
    assert waiting.reason == said and waiting.clears


def test_req_node_not_avail_fails_only_for_nodes_the_cluster_does_not_have():
    launch = launch_of("slurm")
    down = slurm.pending_reason("ReqNodeNotAvail, UnavailableNodes:node[1-2]", gpu_step(), launch, lambda names: [])
    assert down.clears and "node[1-2]" in down.meaning
    missing = ["node7", "node8"]
    gone = slurm.pending_reason("ReqNodeNotAvail, UnavailableNodes:node[7-8]", gpu_step(), launch, lambda _: missing)
    assert not gone.clears and "do not exist: node7, node8" in gone.meaning
    assert "--nodelist in slurm.sbatch_options" in gone.fix


def test_the_fix_names_where_the_steps_shape_is_set():
    launch = launch_of("slurm")
    paths = (Path("/data") / name for name in ("bf16", "nemo", "jsonl", "sft"))
    finetune, _ = nemo_runner.planned_steps(load_finetune_config(), *paths)
    assert "its 5 node(s) x 8 GPU(s) come from nodes and gpus_per_node in " in targets.refusal_fix(finetune, launch)
    assert "configs/nemo/finetune.yaml (sftc train --nodes overrides)" in targets.refusal_fix(finetune, launch)
    imported = targets.refusal_fix(nemo_runner.import_step(Path("/data/bf16"), Path("/data/nemo")), launch)
    assert "its 1 node(s) x 1 GPU(s) come from NeMo's import (nemo_runner.IMPORT_GPUS, not a setting)" in imported
    assert "its 2 node(s) x 8 GPU(s) come from sftc train --nodes, or launch.nodes and launch.gpus_per_node in " in (
        targets.refusal_fix(gpu_step(), launch)
    )
    assert "; slurm.partition, account, qos or sbatch_options in configs/cluster.yaml" in (
        targets.refusal_fix(gpu_step(), launch)
    )


# --- Kubernetes' scheduling events ----------------------------------------------------------------


def test_scheduling_events_held_for_good_never_clear():
    step, launch = gpu_step(), k8s_launch()
    labels = "1 node(s) didn't match Pod's node affinity/selector"
    elsewhere = f"0/3 nodes are available: {labels}, 2 node(s) had untolerated taint {{a: b}}."
    waiting = k8s.scheduling_waiting(elsewhere, step, launch, None)
    assert not waiting.clears and "node_pools.gpu.node_selector" in waiting.fix
    assert "node_pools.gpu.tolerations" in waiting.fix
    too_small = k8s.scheduling_waiting(BUSY, step, launch, pool_holds_pods=False)
    assert not too_small.clears and too_small.meaning == "0/2 nodes are available: 2 Insufficient nvidia.com/gpu"
    assert "launch.gpus_per_node" in too_small.fix
    no_claim = '0/2 nodes are available: persistentvolumeclaim "sftc-data" not found. preemption: ...'
    claim = k8s.scheduling_waiting(no_claim, step, launch, None)
    assert not claim.clears and "kubernetes.data_volume_claim" in claim.fix


def test_scheduling_events_that_may_clear_keep_the_wait():
    step, launch = gpu_step(), k8s_launch()
    assert k8s.scheduling_waiting(BUSY, step, launch, pool_holds_pods=True).clears  # GPUs there, but in use
    assert k8s.scheduling_waiting(BUSY, step, launch, pool_holds_pods=None).clears  # not known: not held for good
    mixed = "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) had untolerated taint {a: b}."
    assert k8s.scheduling_waiting(mixed, step, launch, None).clears  # a cordoned node may come back
    assert k8s.scheduling_waiting("", step, launch, None).clears


# --- the Kubernetes launcher against the stand-in API ---------------------------------------------------


def test_a_pool_without_the_gpus_refuses_the_job_before_anything_is_created(data_dir, kubernetes_cluster):
    kubernetes_cluster.nodes = gpu_nodes(2, gpus=4)
    started = time.monotonic()
    with pytest.raises(LaunchError) as refused:
        jobs.run(gpu_step(), k8s_launch(), lambda text: None)
    message = str(refused.value)
    assert time.monotonic() - started < 10
    assert message.startswith("finetune not submitted: the k8s cluster would not start")
    pool = "0 of 2 node(s) matching sftc.dev/node-pool=gpu,nvidia.com/gpu.present=true have 8 nvidia.com/gpu"
    assert f"{pool} and 512.0 GiB of memory allocatable" in message
    assert "node_pools.gpu in configs/cluster.yaml" in message and "launch.nodes" in message
    assert kubernetes_cluster.jobsets == {} and kubernetes_cluster.deleted == []


def test_a_taint_no_pod_tolerates_cancels_the_job_at_once_naming_the_fix(data_dir, kubernetes_cluster):
    kubernetes_cluster.nodes = gpu_nodes(2)

    def tainted(cluster, name, polls):
        if polls == 1:
            cluster.unschedulable(name, 2, TAINTED)

    kubernetes_cluster.on_poll = tainted
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(LaunchError) as failed:
        jobs.run(gpu_step(), k8s_launch(), lambda text: None, on_line=lines.append)
    message = str(failed.value)
    assert time.monotonic() - started < 10
    (name,) = kubernetes_cluster.deleted  # the JobSet created, then deleted
    said = TAINTED.split(". preemption")[0]
    assert message.startswith(f"k8s job {name} (finetune) cannot start: pending Unschedulable, {said}; a reason that")
    assert "add the taint to node_pools.gpu.tolerations in configs/cluster.yaml" in message
    assert lines[0].startswith(f"k8s job {name} (finetune) submitted; log ")
    assert lines[1].startswith(f"k8s job {name} (finetune) pending: Unschedulable ({said}), ")
    assert not any(" started " in line for line in lines)


def test_busy_gpus_keep_the_wait_shown_until_the_pods_run(data_dir, kubernetes_cluster):
    kubernetes_cluster.nodes = gpu_nodes(2)

    def gpus_free_up(cluster, name, polls):
        if polls == 1:
            cluster.unschedulable(name, 2, BUSY)
        elif polls == 5:
            cluster.set_pods(name, [pod(name, i, "Running", node_name=f"gpu-{i}") for i in range(2)])
        elif polls == 7:
            cluster.complete(name)

    kubernetes_cluster.on_poll = gpus_free_up
    lines: list[str] = []
    outcome = jobs.run(gpu_step(), k8s_launch(), lambda text: None, on_line=lines.append)
    assert outcome.status.ok and outcome.pending_reason == "Unschedulable" and outcome.pending_s > 0
    assert outcome.pending() == {"pending_s": round(outcome.pending_s, 1), "pending_reason": "Unschedulable"}
    name = outcome.job_id
    assert len(lines) == 3, lines  # one pending line: the reason did not change and no minute went by
    assert lines[0].startswith(f"k8s job {name} (finetune) submitted; log ")
    said = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu"
    assert lines[1].startswith(f"k8s job {name} (finetune) pending: Unschedulable ({said}), ")
    assert re.fullmatch(rf"k8s job {name} \(finetune\) started on gpu-0, gpu-1 after [\d.]+ s pending", lines[2]), lines
    assert kubernetes_cluster.deleted == []


def test_a_wait_past_max_pending_is_cancelled_naming_the_setting(data_dir, kubernetes_cluster):
    """Nodes not readable by the job's account: the launch goes without the pre-check (and says so), and whether
    'Insufficient' is for good cannot be told, so the wait goes on until launch.max_pending."""
    kubernetes_cluster.nodes_forbidden = True

    def busy(cluster, name, polls):
        if polls == 1:
            cluster.unschedulable(name, 2, BUSY, event=False)  # the pod's condition says it

    kubernetes_cluster.on_poll = busy
    lines: list[str] = []
    with pytest.raises(LaunchError) as failed:
        jobs.run(gpu_step(), k8s_launch(max_pending="00:00:01"), lambda text: None, on_line=lines.append)
    message = str(failed.value)
    bound = r"waited [\d.]+ s to start \(Unschedulable\), longer than launch\.max_pending 00:00:01 in \S+toy\.yaml"
    assert re.search(bound, message), message
    assert lines[0].startswith("k8s: finetune goes without the cluster's word first: the Kubernetes API named by the")
    assert '403 Forbidden: nodes is forbidden: User "system:serviceaccount:sftc:default"' in lines[0]
    assert len(kubernetes_cluster.deleted) == 1


# --- launch.max_pending ---------------------------------------------------------------------------


def test_max_pending_is_a_positive_slurm_time(tmp_path):
    profile = load_profile("toy").model_dump(mode="json")
    (tmp_path / "profiles").mkdir()
    assert load_profile("toy").launch.max_pending is None  # unbounded unless set
    for value, words in (("00:00:00", "allows no wait at all"), ("an hour", "String should match pattern")):
        launch = {**profile["launch"], "max_pending": value}
        (tmp_path / "profiles" / "toy.yaml").write_text(yaml.safe_dump({**profile, "launch": launch}))
        with pytest.raises(ConfigError, match=re.escape("field 'launch.max_pending'")) as error:
            load_profile("toy", tmp_path)
        assert words in str(error.value)
