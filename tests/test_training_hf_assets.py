"""The `sft_model` asset (Hugging Face backend) through a Dagster instance: metadata, its check, the GPU gate."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re

import dagster as dg
import pytest
from datasets import load_from_disk
from stage_helpers import settings_with, stage_definitions
from training_hf_helpers import build_toy_inputs, one_intra_op_thread, place_as_upstream  # noqa: F401 (autouse fixture)

from sftc_assets.training import assets, preflight
from sftc_core.checks import FAIL, THIS_NODE, Check
from sftc_core.settings import load_settings
from sftc_platform.resources import GpuResource


@pytest.fixture(scope="module")
def toy_inputs(tmp_path_factory):
    return build_toy_inputs(tmp_path_factory.mktemp("toy"), train=32, validation=6)


@pytest.fixture
def chain_data(data_dir, toy_inputs):
    """data_dir holding bf16_checkpoint and nemo_jsonl as the upstream assets leave them."""
    return place_as_upstream(data_dir, *toy_inputs)


RESOURCES = {"gpu": GpuResource(check_triton=False), "pipes_subprocess_client": dg.PipesSubprocessClient()}


def materialize(
    settings, smoke_test: bool = True, raise_on_error: bool = True, instance: dg.DagsterInstance | None = None
):
    with dg.instance_for_test() if instance is None else contextlib.nullcontext(instance) as instance:
        return dg.materialize(
            stage_definitions(assets.defs, settings),
            instance=instance,
            resources=RESOURCES,
            selection=["sft_model"],
            run_config=dg.RunConfig({"sft_model": assets.TrainRunConfig(smoke_test=smoke_test)}),
            raise_on_error=raise_on_error,
        )


def small_batches():
    """The toy settings with batches of 4 and two generated prompts, and a LoRA rehearsal of a few steps: the same path
    in a few seconds."""
    return settings_with(
        training={"batch_size": 4, "parse_check_samples": 2},
        lora_rehearsal={"max_steps": 4, "warmup_steps": 1, "parse_check_samples": 1, "min_val_loss_drop": 1e-4}
        | {"min_parse_rate": 0.0},
    )


def test_sft_model_smoke_run_reports_figures_plot_and_passing_check(chain_data):
    with dg.instance_for_test() as instance:
        result = materialize(small_batches(), instance=instance)
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert result.success
    # The launched job's steps come back as progress in the run's log: the last one with the whole run's figures.
    (done,) = [m for m in messages if m.startswith("training: 10/10 steps (100%)")]
    assert re.search(
        r", loss [\d.]+, lr [\d.e-]+, [\d,.]+ tokens/s, val loss [\d.]+, [\d.]+ steps/s, in [\d.]+ (s|min)", done
    ), done
    # and how the job came to run: submitted, then started (a local process waits for nothing)
    (submitted,) = [m for m in messages if re.fullmatch(r"local job \d+ \(finetune\) submitted; log .+/job\.log", m)]
    job = submitted.split()[2]
    assert messages.index(submitted) < messages.index(f"local job {job} (finetune) started on 127.0.0.1")
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert 0 <= metadata["pending_s"].value < 5 and "pending_reason" not in metadata
    metrics = json.loads((chain_data / "models" / "sft" / "metrics.json").read_text())
    assert metadata["steps"].value == metrics["steps"] == 10
    # metrics.json keeps the exact figure; the metadata shows it to 3 significant digits
    assert metadata["final_val_loss"].value == pytest.approx(metrics["final_val_loss"], rel=5e-3)
    assert len(repr(metadata["final_val_loss"].value).replace(".", "").lstrip("0")) <= 3
    assert metadata["best_val_loss"].value <= metadata["initial_val_loss"].value
    assert (
        metadata["tokens_per_s"].value > 0
        and metadata["parse_checked"].value == 2
        and 0 <= metadata["parse_rate"].value <= 1
    )
    assert metadata["device"].value == "cpu" and metadata["backend"].value == "hf"
    assert metadata["loss_curve"].value.startswith("![training and validation loss](data:image/png;base64,")
    assert "| step | val_loss |" in metadata["validation_losses"].value
    # Each sample generation beside the id and ticker of its validation thesis (the first two validation rows).
    generations = metadata["generations"].value
    assert generations.startswith("| id | ticker | expected | predicted | output |")
    validation = load_from_disk(str(chain_data / "hf_splits"))["validation"]
    for row in validation.select(range(2)):
        assert f"| {row['id']} | {row['ticker']} | {row['action']} |" in generations
    assert "git_commit" in metadata and "config_hash" in metadata
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert set(checks) == {"validation_loss_decreased", "training_loss_stable", "lora_recipe_rehearsed"} and all(
        c.passed for c in checks.values()
    )
    assert checks["validation_loss_decreased"].metadata["relative_drop"].value > 0
    # the GPU recipe's LoRA, rehearsed on the same base: its figures beside the baseline it is judged against
    rehearsed = checks["lora_recipe_rehearsed"]
    assert rehearsed.metadata["steps"].value == 4 and rehearsed.metadata["merge_max_abs_diff"].value == 0.0
    assert rehearsed.metadata["val_loss_drop"].value >= rehearsed.metadata["min_val_loss_drop"].value == 1e-4
    assert rehearsed.metadata["parse_rate"].value >= rehearsed.metadata["min_parse_rate"].value == 0.0
    assert "| adapter_model.safetensors |" in rehearsed.metadata["adapter_files"].value
    assert rehearsed.description.startswith("the recipe's LoRA, rank 32 / alpha 32 on 5 targets")
    assert any(m.startswith("rehearsing the GPU recipe's LoRA: 4 steps on ") for m in messages)


def test_gpu_gate_refuses_before_any_work(chain_data):
    # A CPU limit below the toy checkpoint's size: the gate must refuse.
    result = materialize(settings_with(compute={"cpu_max_checkpoint_bytes": 1000}), raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "sft_model needs a CUDA GPU" in failure.message + str(failure.cause)
    assert not (chain_data / "models").exists()


def test_nemo_backend_is_gated_before_any_work(chain_data, monkeypatch):
    """TRAIN_BACKEND=nemo goes to the NeMo branch, whose checks (the local launcher has one node) stop it before NeMo
    starts."""
    monkeypatch.setenv("TRAIN_BACKEND", "nemo")
    result = materialize(load_settings(), raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "sft_model: finetune: the local launcher runs one node, the step asks for 5" in failure.message
    assert not (chain_data / "models").exists()


def test_check_fails_when_validation_loss_did_not_fall(data_dir):
    output = data_dir / "models" / "sft"
    output.mkdir(parents=True)
    (output / "metrics.json").write_text(
        json.dumps({"initial_val_loss": 2.0, "final_val_loss": 2.5, "best_val_loss": 2.0, "steps": 5})
    )
    (check,) = [
        c for c in assets.defs(load_settings()).asset_checks if c.check_key.name == assets.VALIDATION_LOSS_CHECK
    ]
    result = check()
    assert not result.passed and "2.0000 -> 2.5000" in result.description
    (output / "metrics.json").unlink()
    assert not check().passed


def test_a_climbing_training_loss_fails_its_check_naming_the_learning_rate_and_its_file(data_dir):
    output = data_dir / "models" / "sft"
    output.mkdir(parents=True)
    (check,) = [c for c in assets.defs(load_settings()).asset_checks if c.check_key.name == assets.STABLE_LOSS_CHECK]
    rows = "step,loss,lr,tokens_per_s\n" + "".join(
        f"{i + 1},{loss},0.5,1.0\n" for i, loss in enumerate([7.0, 6.4, 5.0, 5.5, 5.9, 5.8, 7.5, 6.6, 6.2, 6.4, 7.6])
    )
    (output / "training.csv").write_text(rows)
    result = check()
    assert not result.passed
    training = load_settings().profile.training
    assert (
        f"training.learning_rate {training.learning_rate:g} (warmup_steps {training.warmup_steps}, "
        f"max_grad_norm {training.max_grad_norm:g}) in" in result.description
    )
    assert (
        "configs/profiles/toy.yaml is likely too high" in result.description
        and "mean of steps 6..10" in result.description
    )
    (output / "training.csv").write_text(
        "step,loss,lr,tokens_per_s\n" + "".join(f"{i + 1},{7.0 - 0.2 * i},0.003,1.0\n" for i in range(12))
    )
    assert check().passed


def write_metrics(model_dir, initial: float, final: float) -> None:
    figures = {"initial_val_loss": initial, "final_val_loss": final, "best_val_loss": min(initial, final), "steps": 5}
    (model_dir / "metrics.json").write_text(json.dumps(figures))


def test_the_validation_loss_check_called_directly_names_each_backends_learning_rate(tmp_path):
    settings = load_settings(env={})
    assert not assets.check_validation_loss_decreased(tmp_path, settings).passed  # no metrics.json: no finished run
    write_metrics(tmp_path, 2.0, 1.5)
    result = assets.check_validation_loss_decreased(tmp_path, settings)
    assert result.passed and result.description is None and result.metadata["relative_drop"].value == 0.25
    write_metrics(tmp_path, 2.0, float("nan"))
    result = assets.check_validation_loss_decreased(tmp_path, settings)
    assert not result.passed and "2.0000 -> nan; check training.learning_rate " in result.description
    finetune = settings.finetune
    result = assets.check_validation_loss_decreased(tmp_path, settings.model_copy(update={"train_backend": "nemo"}))
    setting = f"learning_rate {finetune.learning_rate:g} (warmup_steps {finetune.warmup_steps}) in {finetune.source}"
    assert f"check {setting} and the data" in result.description


def write_losses(model_dir, losses: list[float]) -> None:
    rows = "".join(f"{step},{loss},0.003,1.0\n" for step, loss in enumerate(losses, start=1))
    (model_dir / "training.csv").write_text("step,loss,lr,tokens_per_s\n" + rows)


def test_the_training_loss_check_called_directly_finds_the_climb(tmp_path):
    settings = load_settings(env={})
    assert not assets.check_training_loss_stable(tmp_path, settings).passed  # no training.csv: no finished run
    write_losses(tmp_path, [7.0 - 0.2 * i for i in range(12)])
    result = assets.check_training_loss_stable(tmp_path, settings)
    assert result.passed and result.metadata["steps"].value == 12 and result.metadata["max_loss"].value == 7.0
    write_losses(tmp_path, [7.0, 6.8, 6.9, 7.0, 7.2, 7.6, 8.0, 8.4, 8.8, 9.2])
    result = assets.check_training_loss_stable(tmp_path, settings)
    assert not result.passed and "is likely too high; lower it" in result.description
    assert result.metadata["rolling_loss"].value > 7.0 * 1.05 and result.metadata["start_loss"].value > 6.8


def test_the_lora_rehearsal_check_fails_naming_a_target_the_model_lacks(chain_data):
    settings = small_batches()
    training = settings.profile.training
    misspelt = training.lora.model_copy(update={"target_modules": ["q_a_proj", "kv_b_prj"]})
    settings = settings_with(settings, training={"lora": misspelt})
    messages = []
    result = assets.check_lora_rehearsal(settings, lambda message, *args: messages.append(message % args))
    assert not result.passed
    assert result.description.startswith("the GPU recipe's LoRA did not run on this base: LoRA target(s) kv_b_prj")
    assert messages == [
        f"rehearsing the GPU recipe's LoRA: 4 steps on {settings.paths.bf16_checkpoint} "
        f"(lora_rehearsal of {settings.config_dir}/profiles/toy.yaml)"
    ]


def test_only_a_profile_that_fine_tunes_otherwise_rehearses_the_recipes_lora():
    def check_names(settings) -> set[str]:
        return {key.name for checks in assets.defs(settings).asset_checks for key in checks.check_keys}

    toy = load_settings(env={})
    assert "lora_recipe_rehearsed" in check_names(toy)
    without = toy.model_copy(update={"profile": toy.profile.model_copy(update={"lora_rehearsal": None})})
    assert check_names(without) == {"validation_loss_decreased", "training_loss_stable", "gpu_preflight"}
    # NeMo's fine-tune runs the recipe's LoRA itself
    assert "lora_recipe_rehearsed" not in check_names(toy.model_copy(update={"train_backend": "nemo"}))
    raw = toy.profile.model_dump()
    raw["training"]["peft"] = "lora"
    with pytest.raises(ValueError, match=r"lora_rehearsal rehearses the GPU recipe's LoRA beside a Hugging Face full"):
        type(toy.profile).model_validate(raw)


def test_the_gpu_preflight_check_called_directly_warns_with_each_failed_item(data_dir):
    settings = load_settings()
    passed = assets.check_gpu_preflight(settings)  # the toy profile on this CPU node: no GPU item required
    assert passed.passed and passed.metadata["ready"].value
    assert "| gpu | this node | NOT CHECKED |" in passed.metadata["checklist"].value
    report = preflight.run_preflight(settings, require_gpu=False)
    short = Check("gpus", THIS_NODE, FAIL, "8 GPU(s) x 80 GiB", "0 of 0 device(s)", "a node with the GPUs")
    warned = assets.preflight_result(dataclasses.replace(report, checks=(*report.checks, short)))
    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
    assert warned.description == short.line and not warned.metadata["ready"].value
    assert warned.metadata["report"].value["checks"][-1] == short.as_dict()
