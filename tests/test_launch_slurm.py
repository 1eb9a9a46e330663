"""The fine-tune as a real 2-node Slurm job: two srun tasks on two Slurm nodes of this machine (.ci/with_slurm),
each a torchrun agent with one process, c10d rendezvous on 127.0.0.1, gloo between them. Skipped where no Slurm
answers `sinfo` (`.ci/run` starts one)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
from stage_helpers import settings_with, stage_definitions
from training_hf_helpers import build_toy_inputs, one_intra_op_thread, place_as_upstream  # noqa: F401 (autouse fixture)

from sftc_assets.training import assets, hf_backend
from sftc_core.settings import load_settings
from sftc_jobs.cli import main as sftc_main
from sftc_jobs.jobs import nightly_launch_tags
from sftc_resources.launchers.slurm import slurm_available
from sftc_resources.resources import GpuResource

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not slurm_available(), reason="no Slurm answers sinfo here: .ci/with_slurm starts a local one")]


@pytest.fixture(scope="module")
def toy_inputs(tmp_path_factory) -> tuple[Path, Path]:
    return build_toy_inputs(tmp_path_factory.mktemp("toy"), train=40, validation=8)


def test_sftc_train_as_a_two_node_job_matches_one_process(toy_inputs, data_dir, capsys):
    model, data = toy_inputs
    common = ["train", "--backend", "hf", "--model", str(model), "--data", str(data), "--max-steps", "24"]
    assert sftc_main([*common, "--output", str(data_dir / "one")]) == 0
    one = json.loads(capsys.readouterr().out)
    assert sftc_main([*common, "--output", str(data_dir / "two"), "--launcher", "slurm", "--nodes", "2", "--procs-per-node", "1"]) == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((data_dir / "two" / "metrics.json").read_text())
    assert (metrics["launcher"], metrics["nodes"], metrics["world_size"]) == ("slurm", 2, 2)
    assert metrics["slurm_job_id"] == printed["job_id"]
    assert metrics["final_val_loss"] == pytest.approx(one["final_val_loss"], rel=0.02)
    assert "#SBATCH --nodes=2" in (Path(printed["job_log"]).parent / "job.sbatch").read_text()


def test_the_nightly_validation_launches_through_slurm_where_it_answers(data_dir):
    assert nightly_launch_tags(load_settings()) == {assets.LAUNCHER_TAG: "slurm", assets.NODES_TAG: "2", assets.PROCS_TAG: "1"}


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
    settings = settings_with(training={"batch_size": 4, "max_steps": 160, "save_every": 10, "eval_every": 40, "parse_check_samples": 2})
    run_config = dg.RunConfig({"sft_model": assets.TrainRunConfig(launcher="slurm", nodes=2, procs_per_node=1)})
    resources = {"gpu": GpuResource(check_triton=False)}
    work_dir = hf_backend.work_dir(settings.paths.sft_model)
    with dg.instance_for_test() as instance:

        def materialize():
            return dg.materialize(
                stage_definitions(assets.defs, settings), instance=instance, resources=resources, selection=["sft_model"], run_config=run_config, raise_on_error=False
            )

        killed: dict = {}
        killer = threading.Thread(target=_kill_rank_one_after_a_checkpoint, args=(work_dir, killed))
        killer.start()
        failed = materialize()
        killer.join()
        assert killed, "rank 1 was never seen running"
        assert not failed.success
        message = failed.get_step_failure_events()[0].step_failure_data.error.message
        assert f"slurm job {killed['job']} (finetune) ended FAILED" in message and f"slurm-{killed['job']}.log" in message
        assert not settings.paths.sft_model.exists()  # nothing published from a failed run
        saved = sorted(int(p.name.split("-")[1]) for p in (work_dir / "checkpoints").glob("step-*"))
        assert saved and saved[-1] < 160

        retried = materialize()
        assert retried.success
        (event,) = retried.get_asset_materialization_events()
        metadata = event.materialization.metadata
        assert (metadata["launcher"].value, metadata["nodes"].value, metadata["world_size"].value) == ("slurm", 2, 2)
        assert metadata["slurm_job_id"].value != killed["job"]
        metrics = json.loads((settings.paths.sft_model / "metrics.json").read_text())
        assert metrics["resumed_from_step"] >= saved[0] and metrics["steps"] == 160  # continued, not from scratch
        assert metrics["final_val_loss"] < metrics["initial_val_loss"]
        assert not work_dir.exists()
