"""`sftc gpu-check` where a CPU can check it: the dry run, the steps against their config, a node without CUDA
(cuda fails, the GPU steps skip, the report says why), the time limits and crashes of a step's process, the skip
and failure paths of the steps, and the CPU parts of their measurements. The GPU steps themselves run on a GPU node
(`make gpu-check`); NeMo and the serving engines are not installed here, so their steps are checked up to that point."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from sftc_assets.checkpoints.fp8 import dequantize_fp8_torch, random_fp8, random_scale
from sftc_assets.reports import gpu_check, gpu_steps
from sftc_assets.reports.gpu_steps import FAIL, PASS, SKIPPED, StepContext
from sftc_core.artifacts import read_marker
from sftc_core.configs import CONFIG_DIR, ConfigError, load_finetune_config
from sftc_core.settings import load_settings
from sftc_jobs.cli import main

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the path of a node without CUDA")


def _settings(**gpu_check_steps):
    settings = load_settings()
    settings = settings.model_copy(update={"profile": settings.profiles["toy"]})
    if gpu_check_steps:
        config = settings.gpu_check
        updates = {name: getattr(config, name).model_copy(update=values) for name, values in gpu_check_steps.items()}
        settings = settings.model_copy(update={"gpu_check": config.model_copy(update=updates)})
    return settings


def test_every_step_has_its_limit_and_expected_result_in_the_config(data_dir):
    config = load_settings().gpu_check
    assert gpu_check.STEP_NAMES == tuple(config.steps)
    assert sum(step.limit_s for step in config.steps.values()) <= config.total_limit_s <= 600
    for step in gpu_check.STEPS:
        assert step.expected(config) and step.proves


def test_limits_above_the_total_are_a_config_error(tmp_path, data_dir):
    import shutil

    config_dir = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, config_dir)
    path = config_dir / "gpu_check.yaml"
    path.write_text(path.read_text().replace("total_limit_s: 600", "total_limit_s: 300"))
    with pytest.raises(
        ConfigError,
        match=r"gpu_check\.yaml: .*limit_s add up to 580 s \(cuda 20 \+ triton_kernel 45 .*above total_limit_s 300",
    ):
        load_settings(env={}, config_dir=config_dir)


def test_dry_run_lists_every_step_with_its_expected_result_and_limit(data_dir, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(
        "SFTC_NEMO_PYTHON", str(tmp_path / "no-venv-nemo" / "python")
    )  # whether or not this checkout has one
    assert main(["gpu-check", "--dry-run"]) == 0
    text = capsys.readouterr().out
    config = load_settings().gpu_check
    for name, step in config.steps.items():
        assert f"{name} (limit {step.limit_s:g} s)" in text
    assert "expected: bit-exact against the torch math on 6 shapes" in text and "of a device copy" in text
    assert main(["gpu-check", "--dry-run", "--json", "--only", "nemo,serving"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["step"] for row in rows] == ["nemo", "serving"]
    assert "no NeMo environment on this node" in rows[0]["here"] and "no serving engine on this node" in rows[1]["here"]
    assert not (data_dir / "reports").exists()  # a dry run writes nothing


def test_an_unknown_step_is_a_one_line_error(data_dir, capsys):
    assert main(["gpu-check", "--only", "cuda,warp_drive"]) == 2
    err = capsys.readouterr().err
    assert (
        "gpu-check step 'warp_drive': expected one of cuda, triton_kernel, toy_inputs" in err and "Traceback" not in err
    )


@NO_CUDA
def test_without_cuda_the_cuda_step_fails_the_gpu_steps_skip_and_the_report_says_why(data_dir, capsys):
    assert main(["gpu-check", "--only", "cuda,triton_kernel,toy_inputs,hf_cuda"]) == 1
    report = json.loads((data_dir / "reports" / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert [s["name"] for s in report["steps"]] == ["cuda", "triton_kernel", "toy_inputs", "hf_cuda"]
    assert steps["cuda"]["status"] == FAIL and "no CUDA device" in steps["cuda"]["figure"]
    assert steps["toy_inputs"]["status"] == PASS  # CPU work: it runs anyway
    for name in ("triton_kernel", "hf_cuda"):
        assert steps[name]["status"] == SKIPPED and steps[name]["figure"].startswith(
            "needs a working CUDA device; step cuda: no CUDA device"
        )
    assert report["passed"] is False and report["counts"] == {PASS: 1, FAIL: 1, SKIPPED: 2}
    assert steps["cuda"]["seconds"] <= steps["cuda"]["limit_s"] and Path(steps["cuda"]["log"]).is_file()
    assert (
        report["environment"]["gpu"]["devices"] == []
        and report["environment"]["packages"]["torch"] == torch.__version__
    )
    toy = gpu_steps.ToyInputs.at(data_dir / "gpu_check" / "toy")
    assert (toy.model_dir / "config.json").is_file() and steps["toy_inputs"]["figures"]["pairs"]["train"] == len(
        (toy.data_dir / "training.jsonl").read_text().splitlines()
    )
    markdown = (data_dir / "reports" / "gpu_check.md").read_text()
    assert "**FAILED: 1 passed, 1 failed, 2 skipped**" in markdown and "| hf_cuda | SKIPPED |" in markdown
    assert read_marker(data_dir / "reports" / "gpu_check.json").writer == "sftc gpu-check"
    assert "gpu-check FAILED: 1 passed, 1 failed, 2 skipped" in capsys.readouterr().out


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan waits for whoever reaps it, which in a container may be nobody)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_step_past_its_limit_is_stopped_with_what_it_started(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time, pathlib;"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid)); print('started', flush=True); time.sleep(600)"
    )
    started = time.monotonic()
    result, seconds = gpu_check.run_child(
        [sys.executable, "-c", script], 3, tmp_path / "step.log", tmp_path / "result.json", grace_s=2
    )
    assert result.status == FAIL and result.figure == "stopped after its limit of 3 s (configs/gpu_check.yaml)"
    assert 3 <= seconds < 20 and time.monotonic() - started < 20 and "started" in result.details[0]
    grandchild, deadline = int(pid_file.read_text()), time.monotonic() + 10
    while _running(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(grandchild)  # the whole process group went


def test_a_crash_is_the_step_s_failure_and_a_result_is_read_back(tmp_path):
    crash = [
        sys.executable,
        "-c",
        f"import os, signal; print('about to crash'); os.kill(os.getpid(), {int(signal.SIGKILL)})",
    ]
    result, _ = gpu_check.run_child(crash, 30, tmp_path / "crash.log", tmp_path / "crash.json")
    assert result.status == FAIL and result.figure == "the step's process ended (killed by signal 9) without a result"
    assert "about to crash" in result.details[0]
    writes = [
        sys.executable,
        "-c",
        (
            "import sys; from sftc_assets.reports import gpu_steps as g; "
            "g.write_result(__import__('pathlib').Path(sys.argv[1]), g.StepResult('PASS', 'ok', {'n': 1}))"
        ),
        str(tmp_path / "ok.json"),
    ]
    result, _ = gpu_check.run_child(writes, 60, tmp_path / "ok.log", tmp_path / "ok.json")
    assert (result.status, result.figure, result.figures) == (PASS, "ok", {"n": 1})


def test_an_exception_in_a_step_is_its_failure_with_the_message(tmp_path):
    result = gpu_check.run_step_here(
        "hf_cuda", StepContext(_settings(), tmp_path, device="cpu"), tmp_path / "result.json"
    )
    assert (
        result.status == FAIL and result.figure.startswith("FileNotFoundError:") and "training.jsonl" in result.figure
    )
    assert gpu_steps.read_result(tmp_path / "result.json") == result


def test_the_steps_skip_or_fail_on_what_is_missing_and_say_so(tmp_path, monkeypatch):
    settings = _settings()
    absent = settings.model_copy(update={"nemo_python_override": tmp_path / "no-nemo" / "python"})
    skipped = gpu_steps.nemo(StepContext(absent, tmp_path))
    assert skipped.status == SKIPPED and f"{tmp_path / 'no-nemo' / 'python'} is not there" in skipped.figure
    broken = settings.model_copy(update={"nemo_python_override": Path(sys.executable)})  # an interpreter without NeMo
    failed = gpu_steps.nemo(StepContext(broken, tmp_path))
    assert failed.status == FAIL and "No module named 'nemo'" in failed.figure
    monkeypatch.setenv("PATH", str(tmp_path))  # neither vllm nor a python with sglang on it
    served = gpu_steps.serving(StepContext(settings, tmp_path))
    assert served.status == SKIPPED and served.figure.startswith(
        "no serving engine on this node: none of vllm, sglang is installed"
    )


def test_the_gpu_tests_step_fails_when_the_tests_only_skip(tmp_path):
    settings = _settings(gpu_tests={"paths": ["tests/test_gpu_kernel.py"]})
    result = gpu_steps.gpu_tests(StepContext(settings, tmp_path))
    if torch.cuda.is_available():
        assert result.status == PASS, result.details
        return
    assert (
        result.status == FAIL
        and result.figures["passed"] == 0
        and result.figures["skipped"] == result.figures["tests"] > 0
    )
    assert any("needs CUDA" in line for line in result.details)


def test_the_kernel_measurement_counts_the_bytes_both_ways():
    generator = torch.Generator().manual_seed(0)
    weight, scale = random_fp8((384, 256), generator), random_scale((384, 256), generator)
    figures = gpu_steps.copy_ratio(dequantize_fp8_torch, weight, scale, repeats=3)
    assert figures["bytes_moved"] == 384 * 256 * (1 + 2) + scale.numel() * 4  # FP8 read, scales read, BF16 written
    assert figures["kernel_gb_per_s"] > 0 and figures["copy_gb_per_s"] > 0
    assert figures["ratio"] == pytest.approx(figures["kernel_gb_per_s"] / figures["copy_gb_per_s"], rel=0.01)
    rows = gpu_steps.exact_on_shapes(lambda w, s: dequantize_fp8_torch(w, s).neg(), [(1, 1), (129, 127)], "cpu")
    assert [row["exact"] for row in rows] == [False, False] and rows[1]["differing"] > 0  # a wrong kernel is caught
    assert all(row["exact"] for row in gpu_steps.exact_on_shapes(dequantize_fp8_torch, [(129, 127)], "cpu"))


def test_the_toy_nemo_config_is_a_valid_one_gpu_layout(tmp_path):
    settings = _settings(nemo={"steps": 12})
    config = load_finetune_config(gpu_steps.toy_finetune_yaml(settings, tmp_path / "finetune.yaml"))
    assert (config.world_size, config.data_parallel_size, config.max_steps, config.val_check_interval) == (1, 1, 12, 6)
    assert config.seq_length == settings.sft.max_seq_length and config.lora == settings.finetune.lora
    assert config.source == str(tmp_path / "finetune.yaml")


def test_the_report_names_each_step_its_figure_expected_value_and_time(tmp_path):
    config = load_settings().gpu_check
    step = gpu_check.STEPS[1]
    outcomes = [
        gpu_check.Outcome(
            "cuda",
            PASS,
            "1 x H100",
            "at least 1",
            "CUDA works",
            20,
            2.5,
            {
                "devices": [{"name": "H100", "memory_gb": 80, "compute_capability": "9.0"}],
                "driver_version": "570.1",
                "torch_cuda": "12.8",
                "cudnn": 91000,
            },
            [],
            str(tmp_path / "cuda.log"),
        ),
        gpu_check.Outcome.skipped(step, config, "needs triton"),
    ]
    environment = {
        "python": "3.11",
        "platform": "Linux",
        "cpu_count": 2,
        "packages": {"torch": "2.13"},
        "gpu": outcomes[0].figures,
        "nemo": None,
        "serving_engine": None,
    }
    report = gpu_check.build_report(
        outcomes,
        config=config,
        environment=environment,
        git={"git_commit": "abc"},
        generated_at=__import__("datetime").datetime(2026, 1, 1),
        seconds=3,
    )
    md, js = gpu_check.write_report(report, tmp_path)
    assert json.loads(js.read_text())["passed"] is True and report["counts"] == {PASS: 1, FAIL: 0, SKIPPED: 1}
    text = md.read_text()
    assert (
        "**PASSED: 1 passed, 0 failed, 1 skipped**" in text and "H100 (80 GB, sm 9.0); driver 570.1, CUDA 12.8" in text
    )
    assert f"| triton_kernel | SKIPPED | needs triton | {step.expected(config)} | 0 / 45 |" in text


@pytest.mark.slow
def test_the_hf_step_on_cpu_trains_the_toy_and_judges_it(tmp_path):
    """The hf_cuda step's body on the CPU (its GPU run is the same code on cuda):
    the toy learns, the figures are read."""
    settings = _settings(hf_cuda={"max_steps": 40, "max_val_loss_ratio": 0.9, "min_parse_rate": 0.0})
    toy = settings.profile.model_copy(
        update={"training": settings.profile.training.model_copy(update={"parse_check_samples": 4, "eval_every": 20})}
    )
    context = StepContext(settings.model_copy(update={"profile": toy}), tmp_path, device="cpu")
    assert gpu_steps.toy_inputs(context).status == PASS
    result = gpu_steps.hf_cuda(context)
    assert result.status == PASS, result.figure
    assert result.figures["device"] == "cpu" and result.figures["steps"] == 40 and result.figures["tokens_per_s"] > 0
    assert result.figures["val_loss_ratio"] == pytest.approx(
        result.figures["final_val_loss"] / result.figures["initial_val_loss"], rel=1e-3
    )
    metrics = json.loads((context.hf_model / "metrics.json").read_text())
    strict = settings.gpu_check.hf_cuda.model_copy(update={"max_val_loss_ratio": result.figures["val_loss_ratio"] / 2})
    assert (
        gpu_steps.judge_training(metrics, strict, context.hf_model).status == FAIL
    )  # the same run against a bound it does not reach


def _stand_in_for_nemo(tuned: Path, losses: list[float]):
    """The NeMo entry's steps stood in for (NeMo builds its model through Megatron on a GPU): the import writes a NeMo
    checkpoint's layout, the export what `nemo_entry export` writes, with the weights of `tuned` as the merged model."""
    import shutil

    def execute(step):
        out = Path(step.args[step.args.index("--output") + 1])
        if step.name == "import":
            (out / "context").mkdir(parents=True)
            (out / "weights").mkdir()
        elif step.name == "export":
            for path in tuned.iterdir():
                if (
                    path.suffix in (".safetensors", ".json")
                    and path.name not in ("metrics.json",)
                    or path.name == "tokenizer.json"
                ):
                    shutil.copy2(path, out / path.name)
            (out / "training.csv").write_text(
                "step,loss,lr,tokens_per_s\n" + "".join(f"{i + 1},{loss},0.001,10\n" for i, loss in enumerate(losses))
            )
            (out / "val.csv").write_text("step,val_loss\n0,7.0\n")
            (out / "metrics.json").write_text(json.dumps({"backend": "nemo", "steps": len(losses)}))

    return execute


@pytest.mark.slow
def test_the_nemo_step_judges_the_import_the_losses_and_the_export(tmp_path, monkeypatch):
    """The nemo step's own work on the CPU with NeMo stood in for: its toy config, the import's layout, the training
    losses by quarter, the export's tensors and its validation loss against the base model's, the test answers."""
    fake = tmp_path / "nemo-python"
    fake.write_text("#!/bin/sh\necho 2.7.3\n")  # answers the version probe as NeMo's interpreter would
    fake.chmod(0o755)
    settings = _settings(nemo={"steps": 8, "test_prompts": 2}, hf_cuda={"max_steps": 40})
    toy = settings.profile.model_copy(
        update={"training": settings.profile.training.model_copy(update={"parse_check_samples": 0, "eval_every": 40})}
    )
    settings = settings.model_copy(update={"profile": toy, "nemo_python_override": fake})
    context = StepContext(settings, tmp_path / "work", device="cpu")
    assert gpu_steps.toy_inputs(context).status == PASS
    gpu_steps.hf_cuda(context)  # a model that learned: what a merged fine-tune looks like
    falling, flat = [7.0, 6.5, 6.0, 5.0, 4.0, 3.5, 3.0, 2.5], [5.0] * 8
    good = gpu_steps.nemo(
        StepContext(settings, context.work_dir, _stand_in_for_nemo(context.hf_model, falling), device="cpu")
    )
    assert good.status == PASS, good.figure
    figures = good.figures
    assert figures["nemo"] == "2.7.3" and (figures["first_quarter_loss"], figures["last_quarter_loss"]) == (6.75, 2.75)
    assert (
        figures["export_val_loss"] < figures["base_val_loss"]
        and figures["lora_tensors_left"] == 0
        and figures["exported_tensors"] > 0
    )
    assert (context.work_dir / "nemo" / "sft" / "loss_curve.png").is_file()
    # the base weights exported unchanged (a merge that lost the fine-tune), and a loss that did not fall: both fail
    untouched = gpu_steps.nemo(
        StepContext(settings, context.work_dir, _stand_in_for_nemo(context.toy.model_dir, flat), device="cpu")
    )
    assert untouched.status == FAIL and untouched.figures["export_val_loss"] == pytest.approx(
        untouched.figures["base_val_loss"], rel=1e-3
    )
