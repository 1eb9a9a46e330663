"""The fine-tune as a real 2-node Slurm job: two srun tasks on two Slurm nodes of this machine (.ci/with_slurm),
each a torchrun agent with one process, c10d rendezvous on 127.0.0.1, gloo between them. And a job that cannot
start: refused before submission in Slurm's words, or (forced past that check) seen pending for a reason that
never clears and cancelled; a job waiting behind others shown pending for Resources until it starts. Skipped where
no Slurm answers `sinfo` (`.ci/run` starts one)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
from launch_helpers import launch_of
from stage_helpers import settings_with, stage_definitions
from training_hf_helpers import build_toy_inputs, one_intra_op_thread, place_as_upstream  # noqa: F401 (autouse fixture)

from sftc_assets.training import assets, hf_backend
from sftc_core.launch import EntryStep
from sftc_core.settings import load_settings
from sftc_jobs.cli import main as sftc_main
from sftc_jobs.jobs import nightly_launch_tags
from sftc_platform.launchers import jobs, slurm
from sftc_platform.launchers.plan import LaunchError
from sftc_platform.launchers.slurm import slurm_available
from sftc_platform.resources import GpuResource

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not slurm_available(), reason="no Slurm answers sinfo here: .ci/with_slurm starts a local one"),
]


@pytest.fixture(scope="module")
def toy_inputs(tmp_path_factory) -> tuple[Path, Path]:
    return build_toy_inputs(tmp_path_factory.mktemp("toy"), train=40, validation=8)


def test_sftc_train_as_a_two_node_job_matches_one_process(toy_inputs, data_dir, capsys):
    model, data = toy_inputs
    common = ["train", "--backend", "hf", "--model", str(model), "--data", str(data), "--max-steps", "24"]
    assert sftc_main([*common, "--output", str(data_dir / "one")]) == 0
    one = json.loads(capsys.readouterr().out)
    assert (
        sftc_main(
            [*common, "--output", str(data_dir / "two"), "--launcher", "slurm", "--nodes", "2", "--procs-per-node", "1"]
        )
        == 0
    ), capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((data_dir / "two" / "metrics.json").read_text())
    assert (metrics["launcher"], metrics["nodes"], metrics["world_size"]) == ("slurm", 2, 2)
    assert metrics["slurm_job_id"] == printed["job_id"]
    assert metrics["final_val_loss"] == pytest.approx(one["final_val_loss"], rel=0.02)
    assert "#SBATCH --nodes=2" in (Path(printed["job_log"]).parent / "job.sbatch").read_text()


def test_the_nightly_validation_launches_through_slurm_where_it_answers(data_dir):
    assert nightly_launch_tags(load_settings()) == {
        assets.LAUNCHER_TAG: "slurm",
        assets.NODES_TAG: "2",
        assets.PROCS_TAG: "1",
    }


def _kill_rank_one_after_a_checkpoint(work_dir: Path, killed: dict, timeout_s: float = 300) -> None:
    """Waits for the job's first checkpoint, then SIGKILLs the worker of global rank 1 (on the second Slurm node)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not list((work_dir / "checkpoints").glob("step-*")):
        time.sleep(0.05)
    for process in psutil.process_iter(["pid"]):
        try:
            env = process.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if env.get("RANK") == "1" and "SLURM_JOB_ID" in env and env.get("SFTC_DATA_DIR") == os.environ["SFTC_DATA_DIR"]:
            killed.update(pid=process.pid, job=env["SLURM_JOB_ID"])
            os.kill(process.pid, signal.SIGKILL)
            return


def test_sft_model_two_node_job_fails_when_a_rank_dies_and_its_retry_resumes(toy_inputs, data_dir):
    place_as_upstream(data_dir, *toy_inputs)
    settings = settings_with(
        training={"batch_size": 4, "max_steps": 160, "save_every": 10, "eval_every": 40, "parse_check_samples": 2}
    )
    run_config = dg.RunConfig({"sft_model": assets.TrainRunConfig(launcher="slurm", nodes=2, procs_per_node=1)})
    resources = {"gpu": GpuResource(check_triton=False)}
    work_dir = hf_backend.work_dir(settings.paths.sft_model)
    with dg.instance_for_test() as instance:

        def materialize():
            return dg.materialize(
                stage_definitions(assets.defs, settings),
                instance=instance,
                resources=resources,
                selection=["sft_model"],
                run_config=run_config,
                raise_on_error=False,
            )

        killed: dict = {}
        killer = threading.Thread(target=_kill_rank_one_after_a_checkpoint, args=(work_dir, killed))
        killer.start()
        failed = materialize()
        killer.join()
        assert killed, "rank 1 was never seen running"
        assert not failed.success
        message = failed.get_step_failure_events()[0].step_failure_data.error.message
        assert (
            f"slurm job {killed['job']} (finetune) ended FAILED" in message and f"slurm-{killed['job']}.log" in message
        )
        assert not settings.paths.sft_model.exists()  # nothing published from a failed run
        saved = sorted(int(p.name.split("-")[1]) for p in (work_dir / "checkpoints").glob("step-*"))
        assert saved and saved[-1] < 160

        retried = materialize()
        assert retried.success
        (event,) = retried.get_asset_materialization_events()
        metadata = event.materialization.metadata
        assert (metadata["launcher"].value, metadata["nodes"].value, metadata["world_size"].value) == ("slurm", 2, 2)
        assert metadata["slurm_job_id"].value != killed["job"]
        # the run's Dagster log says how the job came to run; its metadata how long it waited
        job = metadata["slurm_job_id"].value
        messages = [entry.user_message for entry in instance.all_logs(retried.run_id)]
        assert any(m.startswith(f"slurm job {job} (finetune) submitted; log ") for m in messages)
        assert any(m.startswith(f"slurm job {job} (finetune) started on node[1-2]") for m in messages)
        assert 0 <= metadata["pending_s"].value < 60
        metrics = json.loads((settings.paths.sft_model / "metrics.json").read_text())
        assert metrics["resumed_from_step"] >= saved[0] and metrics["steps"] == 160  # continued, not from scratch
        assert metrics["final_val_loss"] < metrics["initial_val_loss"]
        assert not work_dir.exists()


# --- a job that cannot start, and one that waits ----------------------------------------------------


def _partition_size() -> int:
    sinfo = ["sinfo", "-h", "-N", "-p", slurm.default_partition(), "-o", "%N"]
    return len(subprocess.run(sinfo, capture_output=True, text=True).stdout.split())


def _job_fields(job_id: str) -> dict:
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", shown))


def test_sftc_train_on_more_nodes_than_the_partition_has_stops_before_submitting(toy_inputs, data_dir, capsys):
    """The issue's first mistake: it used to print "slurm job 2 started" and wait without a word."""
    model, data = toy_inputs
    nodes = _partition_size() + 1
    started = time.monotonic()
    inputs = ["--model", str(model), "--data", str(data), "--output", str(data_dir / "sft")]
    shape = ["--launcher", "slurm", "--nodes", str(nodes), "--procs-per-node", "1"]
    code = sftc_main(["train", "--backend", "hf", *inputs, *shape])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - started < 30, err
    assert "finetune not submitted: the slurm cluster would not start" in err
    has = nodes - 1
    assert f"finetune needs {nodes} node(s) with 0 GPU(s) each; the default partition has {has} usable of {has}" in err
    assert "sbatch --test-only: allocation failure: Requested node configuration is not available" in err  # Slurm's
    assert f"To change: its {nodes} node(s) x 0 GPU(s) come from sftc train --nodes" in err
    assert not list((data_dir / "launch").glob("finetune-*/slurm-*.log"))  # nothing submitted


def test_sftc_import_nemo_on_a_partition_without_gpus_stops_before_submitting(data_dir, capsys, monkeypatch):
    """The full profile's import asks for a GPU; this partition has none: Slurm says so before anything is queued."""
    monkeypatch.setenv("SFTC_PROFILE", "full")
    (data_dir / "bf16").mkdir()
    assert sftc_main(["import-nemo", "--model", str(data_dir / "bf16"), "--output", str(data_dir / "nemo")]) == 2
    err = capsys.readouterr().err
    assert "import not submitted: the slurm cluster would not start import" in err
    assert "import needs 1 node(s) with 1 GPU(s) each; the default partition has 0 usable of" in err
    assert "sbatch --test-only: error: Invalid generic resource (gres) specification" in err  # Slurm's own words
    assert "its 1 node(s) x 1 GPU(s) come from NeMo's import (nemo_runner.IMPORT_GPUS, not a setting)" in err
    assert not (data_dir / "nemo").exists()


@pytest.fixture
def throwaway_partition():
    """The default partition of .ci/with_slurm's cluster (ClusterName sftc-ci), which a test may limit and fill;
    its limits restored and its blocking jobs cancelled after."""
    if "sftc-ci" not in subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout:
        pytest.skip("changes a partition's limits and fills its nodes: only on .ci/with_slurm's throwaway cluster")
    partition = slurm.default_partition()
    yield partition
    subprocess.run(["scancel", "--name=sftc-blocker"], check=True)
    unlimited = ["MaxNodes=UNLIMITED", "MaxTime=INFINITE"]
    subprocess.run(["scontrol", "update", f"PartitionName={partition}", *unlimited], check=True)


# Slurm 22.05 gives a job over one of the partition's limits PartitionConfig when it is submitted and the precise
# reason (PartitionNodeLimit, PartitionTimeLimit) from its next scheduling pass on (seen: 3 s later); the launcher
# acts on whichever it sees first, and both name the fix.
@pytest.mark.parametrize(
    "limit, nodes, refused, reasons, fix",
    [
        ("MaxNodes=1", 2, "gives a job at most 1 (MaxNodes", ("PartitionConfig", "PartitionNodeLimit"), "its 2 node"),
        ("MaxTime=00:10:00", 1, "time limit of 00:10:00", ("PartitionConfig", "PartitionTimeLimit"), "time_limit"),
        (None, 3, "has 2 usable of 2", ("PartitionConfig",), "ask for less: its 3 node(s) x 0 GPU(s)"),
    ],
)
def test_a_job_forced_past_the_check_is_cancelled_on_a_reason_that_never_clears(
    throwaway_partition, data_dir, limit, nodes, refused, reasons, fix
):
    if limit:
        subprocess.run(["scontrol", "update", f"PartitionName={throwaway_partition}", limit], check=True)
    step = EntryStep("probe", "platform", (), nodes=nodes)
    launch = launch_of("slurm", env={"SFTC_DATA_DIR": str(data_dir)}, poll_seconds=0.5)
    with pytest.raises(LaunchError, match="probe not submitted: the slurm cluster would not start") as before:
        jobs.run(step, launch, lambda text: None)  # what every launch does first
    assert refused in str(before.value)
    job = jobs.start(step, launch, jobs.new_job_dir(launch, step))  # submitted directly, past the check
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(LaunchError) as failed:
        jobs.follow(job, step, launch, lambda text: None, on_line=lines.append)
    message = str(failed.value)
    assert time.monotonic() - started < 30
    reason = re.match(rf"slurm job {job.id} \(probe\) cannot start: pending (\w+), ", message)[1]
    assert reason in reasons and "a reason that never clears" in message
    assert fix in message and "slurm.partition in configs/cluster.yaml" in message
    assert any(f"(probe) pending: {reason} (" in line for line in lines)
    assert not any(" started " in line for line in lines)
    assert _job_fields(job.id)["JobState"] == "CANCELLED"


def test_a_job_behind_others_shows_pending_resources_then_starts(throwaway_partition, data_dir):
    """Four jobs fill both nodes (the partition shares a core among four: OverSubscribe=FORCE:4); the launched one
    waits for Resources, and starts once they are cancelled."""
    cpus = subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True, text=True).stdout.split()[0]
    blocker = ["sbatch", "--job-name=sftc-blocker", "--nodes=2", f"--cpus-per-task={cpus}", "--wrap=sleep 300"]
    for _ in range(4):
        subprocess.run(blocker, check=True, capture_output=True)

    def release_when_waiting(line: str) -> None:
        lines.append(line)
        if "pending: Resources" in line:
            subprocess.run(["scancel", "--name=sftc-blocker"], check=True)

    lines: list[str] = []
    launch = launch_of("slurm", env={"SFTC_DATA_DIR": str(data_dir)}, poll_seconds=0.5)
    two_seconds = EntryStep("probe", "timeit", ("-n", "1", "-r", "1", "import time; time.sleep(2)"), nodes=2)
    outcome = jobs.run(two_seconds, launch, lambda text: None, on_line=release_when_waiting)
    assert outcome.status.ok and "Resources" in outcome.pending_reason.split(", ") and outcome.pending_s > 0
    name = f"slurm job {outcome.job_id} (probe)"
    assert lines[0].startswith(f"{name} submitted; log ")
    waiting = f"{name} pending: Resources (the nodes it needs are busy with other jobs), "
    assert any(line.startswith(waiting) for line in lines)
    assert re.fullmatch(rf"{re.escape(name)} started on node\[1-2\] after [\d.]+ s pending", lines[-1]), lines
