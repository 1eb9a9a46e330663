"""The NeMo backend against a real NeMo 2.7.3 install (run in .venv-nemo by `make test-nemo`).

`nemo`: on CPU, the shipped config against NeMo's own recipe, the plan applied to `llm.deepseek_v3.finetune_recipe`
and its objects built (data module, model config, optimizer, LoRA, Megatron strategy) without running them.
`gpu` as well: what only a GPU can prove (Megatron needs Transformer Engine and CUDA to build the model): the
toy model's import, 10 fine-tune steps, the LoRA merge and the HF export.
"""

import json
import os
import subprocess
import sys
from dataclasses import fields, is_dataclass

import pytest

pytestmark = pytest.mark.nemo
llm = pytest.importorskip("nemo.collections.llm", reason="needs the NeMo environment: make test-nemo")

import fiddle as fdl  # noqa: E402  (NeMo's own config library, present wherever NeMo is)
from training_nemo_helpers import (  # noqa: E402
    ONE_GPU,
    nemo_run_paths,
    toy_hf_config,
    write_finetune_yaml,
    write_nemo_jsonl,
    write_toy_model,
)

from sftc_assets.training import nemo_entry, nemo_runner  # noqa: E402
from sftc_assets.training.nemo_config import NEMO_LINEAR_MODULES, NemoRunPaths, lora_target_problems, plan_recipe  # noqa: E402
from sftc_core.configs import PROJECT_ROOT, load_finetune_config  # noqa: E402
from sftc_core.launch import entry_env  # noqa: E402
from sftc_platform.launchers.local import local_argv  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_shipped_config_is_nemos_lora_recipe():
    """configs/nemo/finetune.yaml's defaults are the ones NeMo 2.7.3's deepseek_v3.finetune_recipe sets."""
    config = load_finetune_config()
    recipe = llm.deepseek_v3.finetune_recipe(peft_scheme="lora")
    strategy = recipe.trainer.strategy
    assert (recipe.trainer.num_nodes, recipe.trainer.devices) == (config.nodes, config.gpus_per_node)
    assert strategy.tensor_model_parallel_size == config.parallelism.tensor
    assert strategy.pipeline_model_parallel_size == config.parallelism.pipeline
    assert strategy.expert_model_parallel_size == config.parallelism.expert
    assert strategy.context_parallel_size == config.parallelism.context
    assert strategy.sequence_parallel == config.parallelism.sequence_parallel
    assert strategy.num_layers_in_first_pipeline_stage == config.parallelism.layers_in_first_pipeline_stage
    assert strategy.num_layers_in_last_pipeline_stage == config.parallelism.layers_in_last_pipeline_stage
    assert (recipe.data.seq_length, recipe.data.micro_batch_size, recipe.data.global_batch_size) == (
        config.seq_length,
        config.micro_batch_size,
        config.global_batch_size,
    )
    assert recipe.optim.config.lr == config.learning_rate
    assert recipe.optim.lr_scheduler.warmup_steps == config.warmup_steps
    assert recipe.optim.lr_scheduler.min_lr == config.min_learning_rate
    assert (recipe.trainer.max_steps, recipe.trainer.val_check_interval) == (
        config.max_steps,
        config.val_check_interval,
    )
    assert recipe.log.ckpt.every_n_train_steps == config.checkpoint_every_n_steps
    assert list(recipe.peft.target_modules) == config.lora.target_modules
    lora = fdl.build(recipe.peft)
    assert (lora.dim, lora.alpha, lora.dropout) == (config.lora.rank, config.lora.alpha, config.lora.dropout)


def _linear_module_names(spec) -> set[str]:
    """The names of the Linear submodules anywhere in a Megatron ModuleSpec tree (what LoRA's target_modules match)."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.spec_utils import ModuleSpec

    names = set()

    def walk(node, name):
        if isinstance(node, ModuleSpec):
            walk(node.module, name)
            if node.submodules is not None:
                walk(node.submodules, name)
        elif isinstance(node, type) and issubclass(node, (ColumnParallelLinear, RowParallelLinear)):
            names.add(name)
        elif is_dataclass(node) and not isinstance(node, type):
            for f in fields(node):
                walk(getattr(node, f.name), f.name)
        elif isinstance(node, (list, tuple)):  # the block's layer specs
            for item in node:
                walk(item, name)

    walk(spec, "")
    return names


def test_lora_target_names_are_the_linear_modules_of_nemos_deepseek_v3():
    """NEMO_LINEAR_MODULES, which the GPU plan checks lora.target_modules against, read from NeMo 2.7.3 itself: the
    DeepSeek-V3 layer spec Megatron builds the model from. The local spec (the Transformer Engine one needs CUDA names
    the same submodules), with the routed experts as separate Linears (TE groups them under the same names)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

    config = llm.DeepSeekV3Config(moe_grouped_gemm=False)
    names = _linear_module_names(get_gpt_decoder_block_spec(config, use_transformer_engine=False, pp_rank=0))
    # MLASelfAttention builds linear_q_proj only without a q_lora_rank (DeepSeek-V2-Lite); V3 has one.
    assert config.q_lora_rank == 1536 and "linear_q_proj" in names
    assert names - {"linear_q_proj"} == set(NEMO_LINEAR_MODULES)
    assert set(llm.deepseek_v3.finetune_recipe(peft_scheme="lora").peft.target_modules) <= set(NEMO_LINEAR_MODULES)
    assert lora_target_problems(list(load_finetune_config().lora.target_modules)) == []


def test_plan_applied_to_the_real_recipe_builds_its_objects(tmp_path):
    config = load_finetune_config(write_finetune_yaml(tmp_path / "ft.yaml", **ONE_GPU, learning_rate=3e-4))
    paths = nemo_run_paths(tmp_path)
    plan = plan_recipe(config, paths)
    recipe = nemo_entry.build_recipe(plan)

    assert recipe.resume.restore_config.path == str(paths.nemo_checkpoint)
    data = fdl.build(recipe.data)
    assert isinstance(data, llm.FineTuningDataModule)
    assert (data.dataset_root, data.seq_length, data.micro_batch_size, data.global_batch_size, data.seed) == (
        paths.dataset_root,
        config.seq_length,
        config.micro_batch_size,
        config.global_batch_size,
        config.seed,
    )
    assert (
        data.train_path == paths.dataset_root / "training.jsonl"
        and data.validation_path == paths.dataset_root / "validation.jsonl"
    )

    strategy = fdl.build(recipe.trainer.strategy)
    assert (strategy.tensor_model_parallel_size, strategy.pipeline_model_parallel_size) == (1, 1)
    optim = fdl.build(recipe.optim)
    assert optim.config.lr == 3e-4 and optim.lr_scheduler.warmup_steps == config.warmup_steps
    lora = fdl.build(recipe.peft)
    assert lora.dim == config.lora.rank and list(lora.target_modules) == config.lora.target_modules
    assert recipe.trainer.max_steps == config.max_steps and recipe.trainer.devices == 1
    assert recipe.log.ckpt.every_n_train_steps == config.checkpoint_every_n_steps
    assert recipe.log.log_dir == str(paths.work_dir)


def test_plan_model_config_matches_nemos_importer(tmp_path):
    """Our config.json -> DeepSeekV3Config mapping (used to size the recipe's model) against HFDeepSeekImporter's."""
    config = load_finetune_config(write_finetune_yaml(tmp_path / "ft.yaml", **ONE_GPU))
    paths = nemo_run_paths(tmp_path)
    model_config = fdl.build(nemo_entry.build_recipe(plan_recipe(config, paths)).model.config)
    importer = llm.gpt.model.deepseek.HFDeepSeekImporter(str(paths.hf_checkpoint))
    importer.trust_remote_code, importer.convert_mtp = False, False  # set by its apply(); config reads them
    imported = importer.config
    mapped = set(plan_recipe(config, paths)["model_config"]) - {"seq_length"}
    assert mapped <= {f.name for f in fields(imported)}
    assert {name: getattr(model_config, name) for name in mapped} == {name: getattr(imported, name) for name in mapped}
    assert imported.moe_router_score_function == model_config.moe_router_score_function == "sigmoid"


def test_full_recompute_reaches_the_recipes_model_config(tmp_path):
    """recompute: full (which the GPU plan's memory estimate follows) is Megatron's uniform full recompute in the
    recipe."""
    config = load_finetune_config(write_finetune_yaml(tmp_path / "ft.yaml", **ONE_GPU, recompute="full"))
    model = nemo_entry.build_recipe(plan_recipe(config, nemo_run_paths(tmp_path))).model.config
    assert (model.recompute_granularity, model.recompute_method, model.recompute_num_layers) == ("full", "uniform", 1)
    shipped = nemo_entry.build_recipe(
        plan_recipe(
            load_finetune_config(write_finetune_yaml(tmp_path / "none.yaml", **ONE_GPU)), nemo_run_paths(tmp_path)
        )
    )
    assert shipped.model.config.recompute_granularity is None  # the recipe's own default, as the estimate assumes


def test_full_sft_plan_leaves_the_recipe_without_peft(tmp_path):
    config = load_finetune_config(write_finetune_yaml(tmp_path / "ft.yaml", **ONE_GPU, peft="none"))
    recipe = nemo_entry.build_recipe(plan_recipe(config, nemo_run_paths(tmp_path)))
    assert "peft" not in recipe.__arguments__
    assert recipe.optim.config.lr == config.learning_rate


def test_entry_dry_run_in_the_nemo_env_imports_no_nemo(tmp_path):
    paths = nemo_run_paths(tmp_path)
    probe = (
        "import sys; from sftc_assets.training import nemo_entry; code = nemo_entry.main(sys.argv[1:]);"
        "print('NEMO_LOADED' if 'nemo' in sys.modules else 'NEMO_NOT_LOADED', file=sys.stderr); sys.exit(code)"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            probe,
            "import",
            "--hf-checkpoint",
            str(paths.hf_checkpoint),
            "--output",
            str(paths.nemo_checkpoint),
            "--dry-run",
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, **entry_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "NEMO_NOT_LOADED" in done.stderr
    assert json.loads(done.stdout)["model_config"]["num_layers"] == toy_hf_config()["num_hidden_layers"]


@pytest.mark.gpu
@pytest.mark.slow
def test_toy_model_import_ten_steps_merge_and_export(tmp_path):
    """The whole NeMo path on one GPU: import the toy model, 10 LoRA steps, merge, HF export as safetensors."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    hf = write_toy_model(tmp_path / "bf16")
    config_path = write_finetune_yaml(tmp_path / "ft.yaml", **ONE_GPU, gpu_memory_gb=8)
    config = nemo_runner.run_config(load_finetune_config(config_path), smoke_test=True)
    python, env = sys.executable, {**os.environ, **entry_env()}
    out, work = tmp_path / "sft", tmp_path / "sft_nemo"
    paths = NemoRunPaths(
        hf, tmp_path / "nemo", nemo_runner.stage_dataset(write_nemo_jsonl(tmp_path / "d", lines=32), work), out, work
    )
    steps = [
        nemo_runner.import_step(hf, paths.nemo_checkpoint),
        *nemo_runner.finetune_steps(config, config_path, paths, config.max_steps),
    ]
    for step in steps:
        done = subprocess.run(local_argv(step, python), cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{step.name}: {done.stderr[-4000:]}"

    assert (paths.nemo_checkpoint / "context").is_dir() and (paths.nemo_checkpoint / "weights").is_dir()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 10 and metrics["final_train_loss"] is not None
    assert {"training.csv", "val.csv", "config.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.bin")) and list(out.glob("*.safetensors"))
    state = {k: v for f in out.glob("*.safetensors") for k, v in load_file(f).items()}
    assert not any(".adapter." in k or "lora" in k for k in state)  # LoRA merged into the base weights
    AutoModelForCausalLM.from_pretrained(out)  # the exported checkpoint loads as a Hugging Face model
