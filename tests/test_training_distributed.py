"""The Hugging Face fine-tune data-parallel: two ranks (torchrun, gloo on CPU) follow the one-process run, and the
launched fine-tune keeps the last good model until the new one is complete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from training_hf_helpers import build_toy_inputs, one_intra_op_thread  # noqa: F401 (autouse fixture)

from sftc_assets.training.hf_backend import work_dir
from sftc_jobs.cli import main as sftc_main

STEPS = "24"


@pytest.fixture(scope="module")
def toy_inputs(tmp_path_factory) -> tuple[Path, Path]:
    return build_toy_inputs(tmp_path_factory.mktemp("toy"), train=40, validation=8)


def train(capsys, *flags: str) -> dict:
    assert sftc_main(["train", *flags]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_two_ranks_match_one_rank(toy_inputs, data_dir, capsys):
    model, data = toy_inputs
    common = ["--model", str(model), "--data", str(data), "--max-steps", STEPS]
    one = train(capsys, *common, "--output", str(data_dir / "one"))
    two = train(capsys, *common, "--output", str(data_dir / "two"), "--launcher", "local", "--procs-per-node", "2")
    assert (one["world_size"], one["launcher"]) == (1, "local")
    assert (two["world_size"], two["nodes"], two["launcher"]) == (2, 1, "local") and "slurm_job_id" not in two
    assert two["final_val_loss"] == pytest.approx(one["final_val_loss"], rel=0.02)  # the bar; in practice ~1e-6
    assert two["train_tokens"] == one["train_tokens"]  # the same global batches, split between the ranks
    assert two["initial_val_loss"] == pytest.approx(one["initial_val_loss"], rel=1e-6)
    published = data_dir / "two"
    assert json.loads((published / "metrics.json").read_text())["world_size"] == 2
    assert (
        not work_dir(published).exists() and (published / "checkpoints" / f"step-{STEPS}").is_dir()
    )  # the work dir became the output


def test_a_failed_launch_keeps_the_last_good_model(toy_inputs, data_dir, capsys):
    model, data = toy_inputs
    output = data_dir / "sft"
    first = train(
        capsys,
        "--model",
        str(model),
        "--data",
        str(data),
        "--max-steps",
        "4",
        "--output",
        str(output),
        "--launcher",
        "local",
    )
    assert first["steps"] == 4
    # a run that fails inside its job: a line of its training data is not JSON
    broken = data_dir / "broken"
    shutil.copytree(data, broken)
    with open(broken / "training.jsonl", "a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    rc = sftc_main(
        ["train", "--model", str(model), "--data", str(broken), "--output", str(output), "--launcher", "local"]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "(finetune) ended FAILED, exit code 1" in err and "training.jsonl:41: not valid JSON" in err
    launched = ("output", "job_id", "job_log", "pending_s", "pending_reason")  # of the launch, not in metrics.json
    assert json.loads((output / "metrics.json").read_text()) == {k: v for k, v in first.items() if k not in launched}
    assert (output / "model.safetensors").is_file()
