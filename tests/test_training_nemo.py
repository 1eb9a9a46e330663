"""The NeMo backend in our environment: config validation, the config -> recipe plan, the entry's dry run,
the Pipes round trip through a real Dagster instance, and the parts of the export that need no NeMo.

NeMo itself is not in this environment (see tests/test_training_nemo_env.py, `make test-nemo`); nothing here
imports it, which is what the dry run promises.
"""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import torch
import yaml
from safetensors.torch import load_file
from stage_helpers import mark_as_written, stage_definitions
from training_nemo_helpers import (
    ONE_GPU,
    nemo_run_paths,
    toy_hf_config,
    write_finetune_yaml,
    write_hf_checkpoint,
    write_nemo_checkpoint_dirs,
    write_nemo_jsonl,
)

from sftc_assets.training import assets as training_assets
from sftc_assets.training import nemo_entry, nemo_runner
from sftc_assets.training.assets import run_nemo_finetune_via_pipes
from sftc_assets.training.nemo_config import (
    FINETUNE_CONFIG_PATH,
    NemoRunPaths,
    check_nemo_dataset,
    model_config_from_hf,
    plan_recipe,
    read_hf_config,
)
from sftc_core.configs import (
    PROJECT_ROOT,
    ConfigError,
    load_finetune_config,
    with_max_steps,
)
from sftc_core.gpu import GpuDevice, GpuProbe
from sftc_core.launch import entry_env
from sftc_core.nemo_format import NemoDataError
from sftc_core.paths import ArtifactPaths
from sftc_core.settings import load_settings
from sftc_jobs.cli import main as sftc_main
from sftc_platform.launchers.local import local_argv
from sftc_platform.resources import GpuResource

# --- configs/nemo/finetune.yaml ----------------------------------------------------------------


def test_shipped_config_loads_with_consistent_sizes():
    config = load_finetune_config()
    p = config.parallelism
    assert config.world_size == config.nodes * config.gpus_per_node
    assert config.data_parallel_size * p.tensor * p.pipeline * p.context == config.world_size
    assert config.global_batch_size % (config.micro_batch_size * config.data_parallel_size) == 0
    assert config.gpu_memory_bytes == int(config.gpu_memory_gb * 1e9)


def _bad(tmp_path: Path, **overrides) -> str:
    with pytest.raises(ConfigError) as exc:
        load_finetune_config(write_finetune_yaml(tmp_path / "finetune.yaml", **overrides))
    return str(exc.value)


def _parallel(**changes) -> dict:
    return {**yaml.safe_load(FINETUNE_CONFIG_PATH.read_text())["parallelism"], **changes}


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            {"parallelism": _parallel(tensor=3)},
            "field 'parallelism': tensor * pipeline * context = 3*5*1 = 15 "
            "must divide nodes * gpus_per_node = 5*8 = 40",
        ),
        (
            {"global_batch_size": 101, "nodes": 10},
            "field 'global_batch_size': 101 must be a multiple of micro_batch_size * data-parallel size = 1*2 = 2",
        ),
        (
            {"parallelism": _parallel(expert=3)},
            "field 'parallelism.expert': expert * expert_tensor * pipeline = 120 must divide",
        ),
        ({"parallelism": _parallel(tensor=1)}, "field 'parallelism.sequence_parallel': needs tensor >= 2"),
        (
            {
                "parallelism": _parallel(
                    tensor=1,
                    sequence_parallel=False,
                    pipeline=1,
                    layers_in_first_pipeline_stage=3,
                    layers_in_last_pipeline_stage=None,
                )
            },
            "field 'parallelism.layers_in_first_pipeline_stage': "
            "layers_in_first/last_pipeline_stage need pipeline >= 2",
        ),
        (
            {"parallelism": _parallel(context=2), "seq_length": 2050, "nodes": 10},
            "field 'seq_length': 2050 must be a multiple of 2 * parallelism.context = 4",
        ),
        ({"warmup_steps": 1000}, "field 'warmup_steps': 1000 must be below max_steps 1000"),
        ({"min_learning_rate": 1.0}, "field 'min_learning_rate': 1.0 must not exceed learning_rate 0.0001"),
        ({"peft": "qlora"}, "field 'peft'"),
        ({"gpus_per_node": 0}, "field 'gpus_per_node'"),
        ({"lora": {"dim": 8, "alpha": 16, "dropout": 0.0, "target_modules": []}}, "field 'lora.target_modules'"),
    ],
)
def test_config_errors_name_file_field_and_expectation(tmp_path, overrides, expected):
    message = _bad(tmp_path, **overrides)
    assert message.startswith(f"{tmp_path / 'finetune.yaml'}: ")
    assert expected in message
    assert "(got {" not in message  # the problem, not a dump of the whole file


def test_unknown_field_is_refused(tmp_path):
    assert "field 'tensor_parallel'" in _bad(tmp_path, tensor_parallel=8)


def test_with_max_steps_fits_warmup_validation_and_checkpoints_inside():
    short = with_max_steps(load_finetune_config(), 10)
    assert (short.max_steps, short.warmup_steps, short.val_check_interval, short.checkpoint_every_n_steps) == (
        10,
        9,
        10,
        10,
    )
    with pytest.raises(ConfigError, match="at least 1"):
        with_max_steps(load_finetune_config(), 0)


# --- inputs and the plan -----------------------------------------------------------------------


def test_model_config_follows_the_hf_config():
    hf = toy_hf_config(num_hidden_layers=5, first_k_dense_replace=2, n_shared_experts=2)
    model = model_config_from_hf(hf)
    assert model["moe_layer_freq"] == [0, 0, 1, 1, 1]
    assert model["moe_shared_expert_intermediate_size"] == 2 * hf["moe_intermediate_size"]
    assert (model["num_layers"], model["qk_head_dim"], model["qk_pos_emb_head_dim"]) == (
        5,
        hf["qk_nope_head_dim"],
        hf["qk_rope_head_dim"],
    )
    assert model["num_moe_experts"] == hf["n_routed_experts"]


def test_plan_maps_config_onto_recipe_attributes(tmp_path):
    config = load_finetune_config(write_finetune_yaml(tmp_path / "ft.yaml", **ONE_GPU, peft="lora", learning_rate=3e-4))
    paths = nemo_run_paths(tmp_path)
    plan = plan_recipe(config, paths)
    assert plan["factory_kwargs"] == {
        "dir": str(paths.work_dir),
        "name": "sftc",
        "num_nodes": 1,
        "num_gpus_per_node": 1,
        "peft_scheme": "lora",
        "seq_length": config.seq_length,
        "packed_sequence": False,
    }
    assert plan["data"] == {
        "dataset_root": str(paths.dataset_root),
        "seq_length": config.seq_length,
        "micro_batch_size": config.micro_batch_size,
        "global_batch_size": config.global_batch_size,
        "seed": config.seed,
    }
    assert plan["restore_path"] == str(paths.nemo_checkpoint)
    assert plan["optimizer"]["lr"] == 3e-4 and plan["scheduler"]["warmup_steps"] == config.warmup_steps
    assert plan["trainer"]["max_steps"] == config.max_steps and plan["trainer"]["devices"] == 1
    assert plan["strategy"]["tensor_model_parallel_size"] == 1
    assert plan["peft"]["target_modules"] == config.lora.target_modules
    assert plan["export"] == {
        "merge_lora": True,
        "target": "hf",
        "output_path": str(paths.output_dir),
        "target_model_name": str(paths.hf_checkpoint),
    }
    assert plan["model_config"]["num_layers"] == toy_hf_config()["num_hidden_layers"]
    assert plan["model_config"]["seq_length"] == config.seq_length
    json.dumps(plan)  # the plan crosses process boundaries as JSON

    full = plan_recipe(config.model_copy(update={"peft": "none"}), paths)
    assert full["peft"] is None and full["export"]["merge_lora"] is False


# the project's toy model, which the layouts below do not fit
TOY = toy_hf_config()
EXPERTS, HEADS, LAYERS = TOY["n_routed_experts"], TOY["num_attention_heads"], TOY["num_hidden_layers"]


@pytest.mark.parametrize(
    "overrides, hf_overrides, expected",
    [
        (
            {"parallelism": {**ONE_GPU["parallelism"], "expert": 3}, "gpus_per_node": 3, "global_batch_size": 6},
            {},
            f"'parallelism.expert' = 3 must divide the model's {EXPERTS} routed experts",
        ),
        (
            {"parallelism": {**ONE_GPU["parallelism"], "tensor": 8}, "gpus_per_node": 8},
            {},
            f"'parallelism.tensor' = 8 must divide the model's {HEADS} attention heads",
        ),
        (
            {"parallelism": {**ONE_GPU["parallelism"], "pipeline": 2}, "gpus_per_node": 2},
            {},
            f"'parallelism.pipeline' = 2 must divide the model's {LAYERS} layers",
        ),
        (
            {
                "parallelism": {
                    **ONE_GPU["parallelism"],
                    "pipeline": 2,
                    "layers_in_first_pipeline_stage": 2,
                    "layers_in_last_pipeline_stage": 2,
                },
                "gpus_per_node": 2,
            },
            {},
            f"leave {LAYERS - 4} of the model's {LAYERS} layers",
        ),
        ({}, {"scoring_func": "softmax"}, "field 'scoring_func' is 'softmax'"),
    ],
)
def test_plan_refuses_layouts_the_model_cannot_take(tmp_path, overrides, hf_overrides, expected):
    config = load_finetune_config(write_finetune_yaml(tmp_path / "ft.yaml", **{**ONE_GPU, **overrides}))
    paths = nemo_run_paths(tmp_path)
    write_hf_checkpoint(paths.hf_checkpoint, toy_hf_config(**hf_overrides))
    with pytest.raises(ConfigError) as exc:
        plan_recipe(config, paths)
    assert expected in str(exc.value)
    assert str(tmp_path / "ft.yaml") in str(exc.value) or "scoring_func" in expected
    assert str(paths.hf_checkpoint / "config.json") in str(exc.value)


def test_checkpoint_checks_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found; materialize bf16_checkpoint"):
        read_hf_config(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"no \*.safetensors weights"):
        read_hf_config(write_hf_checkpoint(tmp_path / "no_weights", weights=False))
    quantized = write_hf_checkpoint(
        tmp_path / "fp8", {**toy_hf_config(), "quantization_config": {"quant_method": "fp8"}}
    )
    with pytest.raises(ConfigError, match=r"config.json: field 'quantization_config' present: NeMo imports BF16 only"):
        read_hf_config(quantized)
    fp32 = write_hf_checkpoint(tmp_path / "fp32", toy_hf_config(torch_dtype="float32"))
    with pytest.raises(ConfigError, match=r"field 'dtype' \(or 'torch_dtype'\) is 'float32'.*expected \"bfloat16\""):
        read_hf_config(fp32)


def test_dataset_check_counts_lines_and_names_bad_ones(tmp_path):
    root = write_nemo_jsonl(tmp_path / "d", lines=4)
    assert check_nemo_dataset(root) == {"training.jsonl": 4, "validation.jsonl": 4, "test.jsonl": 4}
    with open(root / "validation.jsonl", "a") as fh:
        fh.write(json.dumps({"input": "x", "answer": "y"}) + "\n")
    with pytest.raises(NemoDataError, match=r"validation.jsonl:5: field 'output' missing or not a non-empty string"):
        check_nemo_dataset(root)
    (root / "test.jsonl").unlink()
    (root / "validation.jsonl").write_text('{"input": "a", "output": "b"}\n')
    with pytest.raises(FileNotFoundError, match="test.jsonl: missing; materialize nemo_jsonl first"):
        check_nemo_dataset(root)


# --- the entry's command line (our interpreter stands in for NeMo's: the dry run must not need NeMo) ---


def _entry(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sftc_assets.training.nemo_entry", *args],
        cwd=PROJECT_ROOT,
        env={**entry_env(), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_entry_dry_run_prints_the_plan_without_nemo(tmp_path):
    config_path = write_finetune_yaml(tmp_path / "ft.yaml", **ONE_GPU)
    paths = nemo_run_paths(tmp_path)
    done = _entry(
        "finetune",
        "--config",
        str(config_path),
        "--hf-checkpoint",
        str(paths.hf_checkpoint),
        "--nemo-checkpoint",
        str(paths.nemo_checkpoint),
        "--data",
        str(paths.dataset_root),
        "--work-dir",
        str(paths.work_dir),
        "--output",
        str(paths.output_dir),
        "--max-steps",
        "3",
        "--dry-run",
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    expected = plan_recipe(with_max_steps(load_finetune_config(config_path), 3), paths)
    assert {k: printed[k] for k in expected} == json.loads(json.dumps(expected))
    assert printed["examples"]["training.jsonl"] == 6
    assert not paths.work_dir.exists() and not paths.output_dir.exists()


def test_entry_bad_input_exits_2_with_a_clear_message(tmp_path):
    done = _entry("import", "--hf-checkpoint", str(tmp_path / "nope"), "--output", str(tmp_path / "nemo"), "--dry-run")
    assert done.returncode == 2
    assert "nemo_entry import: error:" in done.stderr and "materialize bf16_checkpoint first" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def _sftc(*argv: str) -> int:
    return sftc_main(list(argv))


def test_sftc_import_nemo_dry_run_and_failure(data_dir, monkeypatch, capfd):
    monkeypatch.setenv("SFTC_NEMO_PYTHON", sys.executable)
    paths = ArtifactPaths(data_dir)
    write_hf_checkpoint(paths.bf16_checkpoint)
    assert _sftc("import-nemo", "--dry-run") == 0
    printed = json.loads(capfd.readouterr().out)
    assert printed == json.loads(json.dumps(nemo_entry.plan_import(paths.bf16_checkpoint, paths.nemo_model)))
    assert _sftc("import-nemo", "--dry-run", "--model", str(data_dir / "missing")) == 2
    err = capfd.readouterr().err
    assert (
        "materialize bf16_checkpoint first" in err
        and "sftc import-nemo: error: local job" in err
        and "(import) ended FAILED, exit code 2" in err
    )
    assert not paths.nemo_model.exists()


# --- the command lines the runner builds ---------------------------------------------------------


def test_steps_use_torchrun_per_gpu_then_one_export_process(tmp_path):
    config = load_finetune_config(
        write_finetune_yaml(tmp_path / "ft.yaml", **{**ONE_GPU, "gpus_per_node": 4, "global_batch_size": 8})
    )
    python = "/opt/nemo/bin/python"
    paths = nemo_run_paths(tmp_path)
    finetune, export = nemo_runner.finetune_steps(config, tmp_path / "ft.yaml", paths, max_steps=10)
    assert (
        finetune.environment,
        finetune.distributed,
        finetune.nodes,
        finetune.procs_per_node,
        finetune.gpus_per_node,
    ) == ("nemo", True, 1, 4, 4)
    argv = local_argv(finetune, python)
    assert argv[:4] == [python, "-m", "torch.distributed.run", "--standalone"] and "--nproc-per-node=4" in argv
    assert argv[argv.index("-m", 3) : argv.index("-m", 3) + 3] == ["-m", nemo_runner.ENTRY_MODULE, "finetune"]
    assert finetune.args[finetune.args.index("--max-steps") + 1] == "10"
    assert (
        local_argv(export, python)[:4] == [python, "-m", nemo_runner.ENTRY_MODULE, "export"] and not export.distributed
    )
    (dry,) = nemo_runner.finetune_steps(config, tmp_path / "ft.yaml", paths, dry_run=True)
    assert dry.dry_run and not dry.distributed and dry.gpus_per_node == 0 and local_argv(dry, python)[-1] == "--dry-run"


def test_interpreter_from_env_then_config_and_a_clear_error_when_missing(tmp_path):
    config = load_finetune_config()
    assert load_settings(env={}).nemo_python == PROJECT_ROOT / config.nemo_python
    assert load_settings(env={"SFTC_NEMO_PYTHON": "/opt/nemo/bin/python"}).nemo_python == Path("/opt/nemo/bin/python")
    with pytest.raises(FileNotFoundError, match="make .venv-nemo"):
        nemo_runner.require_interpreter(tmp_path / "python")


def test_the_shipped_five_node_layout_runs_as_five_nodes_and_other_shapes_are_checked_again():
    config = nemo_runner.run_config(load_finetune_config(FINETUNE_CONFIG_PATH))
    paths = nemo_run_paths(Path("/data"))
    finetune, export = nemo_runner.finetune_steps(config, FINETUNE_CONFIG_PATH, paths)
    assert (finetune.nodes, finetune.procs_per_node, finetune.world_size) == (5, 8, 40) and export.world_size == 1
    assert nemo_runner.run_config(config, nodes=10).world_size == 80  # TP 8 x PP 5 divides 80: data-parallel 2
    with pytest.raises(ConfigError, match=r"nodes=3.*tensor \* pipeline \* context = 8\*5\*1 = 40 must divide"):
        nemo_runner.run_config(config, nodes=3)


# --- the export's pieces that need no NeMo --------------------------------------------------------


def test_bin_shards_become_safetensors_with_an_index(tmp_path):
    shards = {
        "pytorch_model-00001-of-00002.bin": {"a.weight": torch.randn(3, 4), "b.bias": torch.randn(4)},
        "pytorch_model-00002-of-00002.bin": {"c.weight": torch.randn(2, 2).t()},  # not contiguous
    }
    for name, state in shards.items():
        torch.save(state, tmp_path / name)
    (tmp_path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 1}, "weight_map": {}})
    )
    assert nemo_entry.bin_to_safetensors(tmp_path) == 2
    assert not list(tmp_path.glob("*.bin")) and not (tmp_path / "pytorch_model.bin.index.json").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.bias": "model-00001-of-00002.safetensors",
        "c.weight": "model-00002-of-00002.safetensors",
    }
    for name, state in shards.items():
        loaded = load_file(tmp_path / name.replace("pytorch_model", "model").replace(".bin", ".safetensors"))
        assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_summary_of_the_loss_rows():
    result = {
        "peft": True,
        "train_seconds": 12.5,
        "plan": {"world_size": 8},
        "train_rows": [
            {"step": 1, "loss": 2.0, "tokens_per_s": 100.0},
            {"step": 2, "loss": None, "tokens_per_s": 300.0},
            {"step": 3, "loss": 1.5, "tokens_per_s": None},
        ],
        "val_rows": [{"step": 0, "val_loss": 2.5}, {"step": 2, "val_loss": 1.9}, {"step": 3, "val_loss": 2.1}],
    }
    summary = nemo_entry.summarize(result)
    assert (
        summary["initial_val_loss"],
        summary["final_val_loss"],
        summary["best_val_loss"],
        summary["best_val_step"],
    ) == (2.5, 2.1, 1.9, 2)
    assert (summary["steps"], summary["final_train_loss"], summary["tokens_per_s"], summary["peft"]) == (
        3,
        1.5,
        200.0,
        "lora",
    )


def test_last_checkpoint_prefers_the_last_link(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for name in ("m--val_loss=2.0-step=4", "m--val_loss=1.0-step=9", "m--val_loss=1.0-step=9-last"):
        (ckpts / name / "context").mkdir(parents=True)
    (ckpts / "not-a-checkpoint").mkdir()
    assert nemo_entry.last_checkpoint(tmp_path).name == "m--val_loss=1.0-step=9-last"
    with pytest.raises(FileNotFoundError, match="no NeMo checkpoint written"):
        nemo_entry.last_checkpoint(tmp_path / "empty")


# --- the runner's output handling, with the NeMo steps stood in for (they need NeMo on a GPU) -------


def _stand_in_for_nemo(step: nemo_runner.EntryStep) -> None:
    """Writes what `nemo_entry export` writes (HF files, CSVs, metrics.json); finetune writes its work dir."""
    argv = step.args
    if step.name == "export":
        out = Path(argv[argv.index("--output") + 1])
        (out / "config.json").write_text("{}")
        (out / "training.csv").write_text("step,loss,lr,tokens_per_s\n1,2.0,0.001,10\n2,,0.001,10\n3,1.0,0.001,10\n")
        (out / "val.csv").write_text("step,val_loss\n0,2.5\n3,1.2\n")
        (out / "metrics.json").write_text(json.dumps({"backend": "nemo", "steps": 3}))


def test_runner_stages_data_and_publishes_the_output_whole(tmp_path):
    paths = nemo_run_paths(tmp_path)
    config = load_finetune_config(write_finetune_yaml(tmp_path / "ft.yaml", **ONE_GPU))
    seen = []

    def execute(step):
        seen.append(step)
        assert not paths.output_dir.exists()  # nothing appears under the final name until the end
        _stand_in_for_nemo(step)

    metrics = nemo_runner.nemo_finetune(
        execute, config, paths.hf_checkpoint, paths.nemo_checkpoint, paths.dataset_root, paths.output_dir
    )
    assert metrics == {"backend": "nemo", "steps": 3}
    assert [s.name for s in seen] == ["finetune", "export"]
    staged = Path(seen[0].args[seen[0].args.index("--data") + 1])
    assert (
        staged == paths.work_dir / "dataset"
        and (staged / "training.jsonl").read_text() == (paths.dataset_root / "training.jsonl").read_text()
    )
    assert (paths.output_dir / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert {p.name for p in paths.output_dir.iterdir()} == {
        "config.json",
        "training.csv",
        "val.csv",
        "metrics.json",
        "loss_curve.png",
    }
    train_rows, val_rows = nemo_runner.read_loss_rows(paths.output_dir)
    assert [r["step"] for r in train_rows] == [1, 3] and val_rows[-1]["val_loss"] == 1.2


def test_runner_leaves_no_partial_output_when_a_step_fails(tmp_path):
    paths = nemo_run_paths(tmp_path)
    config = load_finetune_config(write_finetune_yaml(tmp_path / "ft.yaml", **ONE_GPU))

    def execute(step):
        _stand_in_for_nemo(step)
        if step.name == "export":
            raise RuntimeError("nemo_entry export failed with exit code 1")

    with pytest.raises(RuntimeError, match="export failed"):
        nemo_runner.nemo_finetune(
            execute, config, paths.hf_checkpoint, paths.nemo_checkpoint, paths.dataset_root, paths.output_dir
        )
    assert not paths.output_dir.exists()
    assert not [p for p in paths.output_dir.parent.iterdir() if p.name.startswith(".sft")]


# --- Dagster Pipes, through a real instance ------------------------------------------------------


class FakeGpus(GpuResource):
    """A probe result standing in for the node's GPUs (this machine has none): the gate's input, nothing else."""

    devices: int = 1
    memory_gb: float = 80.0

    def probe(self) -> GpuProbe:
        devices = tuple(
            GpuDevice(i, "NVIDIA H100 80GB HBM3 (fake probe)", int(self.memory_gb * 1e9), (9, 0))
            for i in range(self.devices)
        )
        return GpuProbe(bool(devices), devices, torch.__version__, "12.8", None, False, "fake probe")


@pytest.fixture
def pipes_env(data_dir, monkeypatch):
    """Our interpreter as the "NeMo" one: the dry run imports no NeMo, so any Python with pydantic will do."""
    monkeypatch.setenv("SFTC_NEMO_PYTHON", sys.executable)
    paths = ArtifactPaths(data_dir)
    write_hf_checkpoint(paths.bf16_checkpoint)
    write_nemo_jsonl(paths.nemo_jsonl)
    mark_as_written("bf16_checkpoint", paths.bf16_checkpoint)
    mark_as_written("nemo_jsonl", paths.nemo_jsonl)
    return paths


def _resources(paths: ArtifactPaths, gpu: GpuResource) -> dict:
    return {"gpu": gpu}


def nemo_model() -> list:
    """The training stage for the environment's settings, for materializing nemo_model alone."""
    return stage_definitions(training_assets.defs)


def _messages(instance: dg.DagsterInstance, result) -> str:
    """The run's log messages, with the errors the external process reported through Pipes."""
    lines = []
    for entry in instance.all_logs(result.run_id):
        lines.append(str(entry.user_message))
        event = entry.dagster_event
        error = getattr(event.event_specific_data, "error", None) if event is not None else None
        if error is not None:
            lines.append(error.message)
    return "\n".join(lines)


def test_nemo_model_dry_run_round_trips_through_pipes(pipes_env):
    dry_run = {"ops": {"nemo_model": {"config": {"dry_run": True}}}}
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            nemo_model(),
            selection=["nemo_model"],
            resources=_resources(pipes_env, FakeGpus()),
            run_config=dry_run,
            instance=instance,
        )
        assert result.success
        (materialization,) = result.asset_materializations_for_node("nemo_model")
        assert materialization.metadata["dry_run"].value is True
        planned = materialization.metadata["planned"].value
        assert planned == json.loads(
            json.dumps(nemo_entry.plan_import(pipes_env.bf16_checkpoint, pipes_env.nemo_model))
        )
        assert planned["model_config"]["num_moe_experts"] == toy_hf_config()["n_routed_experts"]
        assert "dry run of import: inputs valid, nothing written" in _messages(instance, result)  # pipes log, forwarded
    assert not pipes_env.nemo_model.exists()


def test_nemo_model_gate_stops_before_any_work(pipes_env, monkeypatch):
    monkeypatch.setenv("SFTC_NEMO_PYTHON", str(pipes_env.root / "no-such-python"))  # would fail if reached
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            nemo_model(),
            selection=["nemo_model"],
            resources=_resources(pipes_env, FakeGpus(devices=0)),
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        failure = result.failure_data_for_node("nemo_model")
        assert (
            "nemo_model needs 1 CUDA GPU(s) with at least 74.5 GiB each; this node has 0 such device(s)"
            in failure.error.message
        )
        assert "no-such-python" not in _messages(instance, result)


def test_nemo_model_bad_input_fails_with_the_entry_message(pipes_env):
    write_hf_checkpoint(pipes_env.bf16_checkpoint, {**toy_hf_config(), "quantization_config": {"quant_method": "fp8"}})
    mark_as_written("bf16_checkpoint", pipes_env.bf16_checkpoint)
    dry_run = {"ops": {"nemo_model": {"config": {"dry_run": True}}}}
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            nemo_model(),
            selection=["nemo_model"],
            resources=_resources(pipes_env, FakeGpus()),
            run_config=dry_run,
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        messages = _messages(instance, result)
        assert "pipes closed with exception" in messages
        assert "field 'quantization_config' present: NeMo imports BF16 only" in messages


@dg.asset(name="sft_model")
def _sft_model_nemo_branch(context: dg.AssetExecutionContext, gpu: GpuResource):
    """What the sft_model asset does for backend nemo, reduced to the call (the real asset lives in assets.py)."""
    settings = load_settings().model_copy(
        update={"finetune": load_finetune_config(context.run.tags["finetune_config"])}
    )
    plan = run_nemo_finetune_via_pipes(context, gpu, settings, nemo_runner.run_config(settings.finetune), dry_run=True)
    return dg.MaterializeResult(metadata={"planned": dg.MetadataValue.json(plan)})


def test_sft_model_nemo_branch_plans_through_pipes_and_gates_on_the_config(pipes_env, tmp_path):
    write_nemo_checkpoint_dirs(pipes_env.nemo_model)
    config_path = write_finetune_yaml(tmp_path / "ft.yaml", **{**ONE_GPU, "gpus_per_node": 2, "global_batch_size": 8})
    tags = {"finetune_config": str(config_path)}
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [_sft_model_nemo_branch], resources=_resources(pipes_env, FakeGpus(devices=2)), instance=instance, tags=tags
        )
        planned = result.asset_materializations_for_node("sft_model")[0].metadata["planned"].value
        paths = NemoRunPaths(
            pipes_env.bf16_checkpoint,
            pipes_env.nemo_model,
            pipes_env.nemo_jsonl,
            pipes_env.sft_model,
            nemo_runner.nemo_work_dir(pipes_env.sft_model),
        )
        expected = plan_recipe(load_finetune_config(config_path), paths)
        assert {k: planned[k] for k in expected} == json.loads(json.dumps(expected))
        assert planned["trainer"]["devices"] == 2

        small = _resources(pipes_env, FakeGpus(devices=2, memory_gb=40))
        failed = dg.materialize(
            [_sft_model_nemo_branch], resources=small, instance=instance, tags=tags, raise_on_error=False
        )
        assert (
            "sft_model needs 2 CUDA GPU(s) with at least 74.5 GiB each"
            in failed.failure_data_for_node("sft_model").error.message
        )
    assert not pipes_env.sft_model.exists()
