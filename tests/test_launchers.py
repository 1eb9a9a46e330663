"""The launcher layer without a cluster: the sbatch script of NeMo's 5 x 8 layout, Slurm's states, sinfo's GPUs,
the JobSet manifest against JobSet's published schema (kubernetes-sigs/jobset v0.9.1, tests/schemas/) and the
Kubernetes client's own models, and real local jobs (a failing step, a server cancelled)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict
from kubernetes.client import V1JobTemplateSpec, V1PodTemplateSpec
from launch_helpers import launch_of

from sftc_assets.training import nemo_runner
from sftc_core.configs import load_finetune_config
from sftc_core.launch import EntryStep, launch_record
from sftc_jobs.cli import main as sftc_main
from sftc_platform.launchers import jobs, k8s, slurm
from sftc_platform.launchers.plan import LaunchError, time_seconds
from sftc_platform.launchers.slurm import PartitionNode

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "jobset-v1alpha2.json").read_text())


def kube_model(model_class, manifest: dict):
    """A manifest fragment (camelCase) as the Kubernetes client's model, through dagster-k8s's strict parser."""
    return k8s_model_from_dict(model_class, k8s_snake_case_dict(model_class, manifest))


def nemo_finetune_step() -> EntryStep:
    config = nemo_runner.run_config(load_finetune_config())
    (finetune, _) = nemo_runner.planned_steps(
        config,
        Path("/data/checkpoints/bf16"),
        Path("/data/checkpoints/nemo"),
        Path("/data/nemo_jsonl"),
        Path("/data/models/sft"),
    )
    return finetune


# --- Slurm: the script, the states, the partition's GPUs -----------------------------------------


def test_sbatch_script_of_nemos_five_by_eight_layout(tmp_path):
    launch = launch_of(
        "slurm",
        partition="gpu",
        account="llm",
        qos="high",
        sbatch_options=["--exclusive"],
        setup=["module load cuda/12.4"],
    )
    script = slurm.render_sbatch(nemo_finetune_step(), launch, tmp_path)
    directives = [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH")]
    for expected in (
        "--nodes=5",
        "--ntasks-per-node=1",
        "--gpus-per-node=8",
        "--partition=gpu",
        "--account=llm",
        "--qos=high",
        "--exclusive",
        "--requeue",
    ):
        assert expected in directives
    assert f"--output={tmp_path / 'slurm-%j.log'}" in directives and f"--time={launch.time_limit}" in directives
    srun = script.strip().splitlines()[-1]
    assert srun.startswith("srun --kill-on-bad-exit=1 --ntasks-per-node=1 ")
    assert (
        "-m torch.distributed.run --nnodes=5 --nproc-per-node=8 "
        "--rdzv-backend=c10d --rdzv-endpoint=$head_addr:$rdzv_port" in srun
    )
    assert "-m sftc_assets.training.nemo_entry finetune" in srun
    assert "module load cuda/12.4" in script and "export SFTC_LAUNCHER=slurm" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0  # a valid shell script


def test_a_path_with_a_space_is_quoted_in_its_directive(tmp_path):
    """sbatch ends an unquoted #SBATCH value at the first space ("Invalid directive"): a data directory with one."""
    job_dir = tmp_path / "sftc data" / "launch"
    script = slurm.render_sbatch(nemo_finetune_step(), launch_of("slurm"), job_dir)
    assert f'#SBATCH --output="{job_dir / "slurm-%j.log"}"\n' in script and "#SBATCH --nodes=5\n" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_sbatch_with_a_container_runs_python_of_the_image_through_pyxis(tmp_path):
    launch = launch_of(
        "slurm",
        environments={"nemo": {"python": None, "container_image": "nvcr.io#nvidia/nemo:25.09"}},
        container_mounts=["/lustre:/lustre"],
    )
    srun = slurm.render_sbatch(nemo_finetune_step(), launch, tmp_path).strip().splitlines()[-1]
    assert "--container-image=nvcr.io#nvidia/nemo:25.09" in srun and "--container-mounts=/lustre:/lustre" in srun
    assert " python -m torch.distributed.run " in srun


@pytest.mark.parametrize(
    "state, ok, retryable, words",
    [
        ("COMPLETED", True, False, "every task exited 0"),
        ("FAILED", False, False, "exited non-zero"),
        ("TIMEOUT", False, False, "time limit"),
        ("PREEMPTED", False, True, "preempted"),
        ("NODE_FAIL", False, True, "nodes failed"),
        ("OUT_OF_MEMORY", False, False, "out of host memory"),
        ("CANCELLED by 0", False, False, "cancelled"),
    ],
)
def test_slurm_end_states_say_what_happened(state, ok, retryable, words):
    status = slurm.status_of(state, 1)
    assert status.done and status.ok is ok and status.retryable is retryable and status.state == state.split()[0]
    assert words in (slurm.END_STATES[status.state] if ok else status.reason)


@pytest.mark.parametrize("state", ["PENDING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED", "CONFIGURING"])
def test_slurm_active_states_keep_the_watch_going(state):
    assert not slurm.status_of(state).done


def test_gres_gpus_and_partition_capacity():
    assert [slurm.parse_gres_gpus(g) for g in ("gpu:h100:8(S:0-1)", "gpu:8", "gpu:a100:4,gpu:h100:4", "(null)")] == [
        8,
        8,
        8,
        0,
    ]
    step = nemo_finetune_step()
    nodes = [PartitionNode(f"n{i}", 8, "idle") for i in range(4)] + [PartitionNode("n9", 8, "drain")]
    assert (
        slurm.gpu_capacity_problem(step, nodes, "gpu")
        == "finetune needs 5 node(s) with 8 GPU(s) each; partition gpu has 4 usable of 5"
    )
    assert slurm.gpu_capacity_problem(step, [*nodes, PartitionNode("n5", 8, "mix")], "gpu") is None


def test_partition_capacity_counts_host_memory_where_sinfo_gives_it():
    step, tib = nemo_finetune_step(), 1 << 40
    nodes = [PartitionNode(f"n{i}", 8, "idle", memory_bytes=2 * tib) for i in range(4)] + [
        PartitionNode("n4", 8, "idle", memory_bytes=tib)
    ]
    assert slurm.gpu_capacity_problem(step, nodes, "gpu", memory_bytes=tib) is None
    problem = slurm.gpu_capacity_problem(step, nodes, "gpu", memory_bytes=int(1.5 * tib))
    assert (
        problem == "finetune needs 5 node(s) with 8 GPU(s) and 1.5 TiB of memory each; partition gpu has 4 usable of 5"
    )
    unknown = [PartitionNode(f"n{i}", 8, "idle") for i in range(5)]  # sinfo without memory: not held against the nodes
    assert slurm.gpu_capacity_problem(step, unknown, "gpu", memory_bytes=2 * tib) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 1800),
        ("30:15", 1815),
        ("04:00:00", 14400),
        ("1-00:00:00", 86400),
        ("2-12", 216000),
        ("1-02:30", 95400),
        ("infinite", None),
        ("UNLIMITED", None),
    ],
)
def test_slurm_times_in_every_form_sinfo_and_sbatch_write(text, seconds):
    assert time_seconds(text) == seconds


def test_a_time_limit_longer_than_the_partitions_is_named():
    nodes = [
        PartitionNode("n0", 8, "idle", time_limit_s=2 * 86400),
        PartitionNode("n1", 8, "idle", time_limit_s=2 * 86400),
    ]
    assert slurm.time_limit_problem("1-12:00:00", nodes, "gpu") is None
    assert (
        slurm.time_limit_problem("3-00:00:00", nodes, "gpu")
        == "launch.time_limit 3-00:00:00 is longer than partition gpu's time limit of 2-00:00:00: "
        "Slurm refuses the job or holds it pending for ever (PartitionTimeLimit)"
    )
    assert slurm.time_limit_problem("30-00:00:00", [PartitionNode("n0", 8, "idle")], None) is None  # infinite


def test_a_node_count_above_the_partitions_max_nodes_is_named():
    step = nemo_finetune_step()
    limited = [PartitionNode(f"n{i}", 8, "idle", max_nodes=4) for i in range(8)]
    problem = slurm.node_limit_problem(step, limited, "gpu")
    assert problem == "finetune asks for 5 node(s), partition gpu gives a job at most 4 (MaxNodes)"
    unlimited = [PartitionNode(f"n{i}", 8, "idle") for i in range(8)]
    assert slurm.node_limit_problem(step, unlimited, "gpu") is None


def test_failure_message_names_the_job_its_state_and_the_log(tmp_path):
    log = tmp_path / "slurm-42.log"
    log.write_text("step 1\nRuntimeError: rank 1 died\n")
    outcome = jobs.JobOutcome("slurm", "42", slurm.status_of("NODE_FAIL", 1), log, tmp_path)
    message = jobs.failure_message(nemo_finetune_step(), outcome)
    assert message.startswith("slurm job 42 (finetune) ended NODE_FAIL, exit code 1: one of its nodes failed")
    assert str(log) in message and "RuntimeError: rank 1 died" in message


def test_launch_record_reads_torchrun_and_slurm():
    env = {"SFTC_LAUNCHER": "slurm", "WORLD_SIZE": "16", "GROUP_WORLD_SIZE": "2", "SLURM_JOB_ID": "7"}
    assert launch_record(env) == {"launcher": "slurm", "world_size": 16, "nodes": 2, "slurm_job_id": "7"}
    assert launch_record({}) == {"launcher": "local", "world_size": 1, "nodes": 1}


# --- Kubernetes: the JobSet ---------------------------------------------------------------------


def test_jobset_validates_against_its_published_schema_and_the_kubernetes_models():
    launch = launch_of("k8s")
    manifest = k8s.render_jobset(nemo_finetune_step(), launch, "sftc-finetune-x", {"DAGSTER_PIPES_CONTEXT": "abc"})
    jsonschema.Draft7Validator(SCHEMA["openAPIV3Schema"]).validate(manifest)
    assert (manifest["apiVersion"], manifest["kind"]) == (f"{SCHEMA['group']}/{SCHEMA['version']}", SCHEMA["kind"])
    job_template = manifest["spec"]["replicatedJobs"][0]["template"]
    job = kube_model(V1JobTemplateSpec, job_template)  # the Kubernetes client's own models accept it
    assert (job.spec.parallelism, job.spec.completion_mode) == (5, "Indexed")
    pod = kube_model(V1PodTemplateSpec, job_template["spec"]["template"])
    container = pod.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "8" == container.resources.requests["nvidia.com/gpu"]
    assert pod.spec.node_selector["sftc.dev/node-pool"] == "gpu"
    assert (
        container.command[container.command.index("--rdzv-endpoint=sftc-finetune-x-node-0-0.sftc-finetune-x:29500")]
        and "--nnodes=5" in container.command
    )
    assert ("DAGSTER_PIPES_CONTEXT", "abc") in [(e.name, e.value) for e in container.env]
    assert "/data/checkpoints/bf16" in container.command  # data paths as the pods mount them


def test_the_schema_check_is_not_vacuous():
    manifest = k8s.render_jobset(nemo_finetune_step(), launch_of("k8s"), "sftc-finetune-x")
    manifest["spec"]["replicatedJobs"][0]["replicas"] = "one"
    with pytest.raises(jsonschema.ValidationError, match="'one' is not of type 'integer'"):
        jsonschema.Draft7Validator(SCHEMA["openAPIV3Schema"]).validate(manifest)
    with pytest.raises(Exception, match="Unexpected keys in model class V1PodSpec"):
        kube_model(V1PodTemplateSpec, {"spec": {"containers": [], "noSuchField": 1}})


def test_jobset_status_conditions():
    assert k8s.status_of({"status": {"conditions": [{"type": "Completed", "status": "True"}]}}).ok
    failed = k8s.status_of(
        {
            "status": {
                "conditions": [
                    {"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "pod node-1 exited 137"}
                ]
            }
        }
    )
    assert failed.done and not failed.ok and failed.reason == "FailedJobs: pod node-1 exited 137"
    assert not k8s.status_of({"status": {}}).done


# --- the command line's dry runs ------------------------------------------------------------------


def test_nemo_dry_run_prints_the_five_node_sbatch_plan(data_dir, capsys, monkeypatch):
    monkeypatch.setenv("TRAIN_BACKEND", "nemo")
    assert sftc_main(["train", "--launcher", "slurm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# every node runs:" in out and "--nnodes=5 --nproc-per-node=8" in out and "#SBATCH --nodes=5" in out
    assert "nemo_entry finetune" in out and "nemo_entry export" in out
    assert not (data_dir / "launch").exists()  # a dry run starts and writes nothing


def test_nemo_k8s_dry_run_prints_a_valid_manifest(data_dir, capsys, monkeypatch):
    monkeypatch.setenv("TRAIN_BACKEND", "nemo")
    assert sftc_main(["train", "--launcher", "k8s", "--dry-run"]) == 0
    documents = [
        doc for doc in yaml.safe_load_all(capsys.readouterr().out.replace("# ---", "---\n#")) if isinstance(doc, dict)
    ]
    finetune = next(doc for doc in documents if doc["metadata"]["labels"]["sftc.dev/step"] == "finetune")
    jsonschema.Draft7Validator(SCHEMA["openAPIV3Schema"]).validate(finetune)
    assert finetune["spec"]["replicatedJobs"][0]["template"]["spec"]["parallelism"] == 5


def test_shape_flags_are_checked_against_the_layout(data_dir, capsys, monkeypatch):
    monkeypatch.setenv("TRAIN_BACKEND", "nemo")
    assert sftc_main(["train", "--launcher", "slurm", "--nodes", "3", "--dry-run"]) == 2
    assert "must divide nodes * gpus_per_node = 3*8 = 24" in capsys.readouterr().err


# --- real local jobs ---------------------------------------------------------------------------------


def test_a_failing_local_step_fails_naming_the_job_state_and_log(data_dir):
    step = EntryStep(
        "probe",
        "sftc_assets.training.hf_entry",
        ("--run-settings", str(data_dir / "missing.json"), "--model", "m", "--data", "d", "--output", "o"),
    )
    with pytest.raises(LaunchError) as failure:
        jobs.run(step, launch_of("local", env={"SFTC_DATA_DIR": str(data_dir)}), lambda text: None)
    message = str(failure.value)
    assert "local job " in message and "(probe) ended FAILED, exit code 2" in message and "missing.json" in message
    assert not failure.value.retryable


def test_a_server_job_runs_until_cancelled(data_dir):
    """A long-running job (a server, as served evaluation will start): started, reachable on its host, cancelled."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    step = EntryStep("serve", "http.server", (str(port), "--bind", "127.0.0.1"))
    launch = launch_of("local", env={"SFTC_DATA_DIR": str(data_dir)})
    job = jobs.start(step, launch, jobs.new_job_dir(launch, step))
    try:
        for _ in range(100):
            try:
                socket.create_connection((job.hosts()[0], port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"the server did not listen: {job.read_log()}")
        assert not job.poll().done
    finally:
        job.cancel()
    status = job.poll()
    assert status.done and not status.ok
