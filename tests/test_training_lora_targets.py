"""The one NeMo-to-Hugging-Face name table of the LoRA targets, and the recipe's LoRA handed to the HF backend."""

from __future__ import annotations

import pytest
import torch
from config_helpers import config_clone, edit_yaml

from sftc_assets.checkpoints.toy_model import toy_config
from sftc_assets.training.nemo_config import NEMO_LINEAR_MODULES
from sftc_core.configs import ConfigError, load_finetune_config
from sftc_core.lora_targets import NEMO_TO_HF_MODULES, hf_targets
from sftc_core.settings import load_settings


def test_the_table_maps_nemos_deepseek_v3_modules_onto_linear_modules_of_transformers_deepseek_v3():
    """Its keys are the NeMo names the GPU plan checks targets against (tests/test_training_nemo_env.py reads them
    from NeMo's own layer spec); each Hugging Face name is a Linear module of transformers' DeepSeek-V3."""
    from transformers import DeepseekV3ForCausalLM

    model = DeepseekV3ForCausalLM(toy_config())
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert tuple(NEMO_TO_HF_MODULES) == NEMO_LINEAR_MODULES
    for nemo, names in NEMO_TO_HF_MODULES.items():
        assert set(names) <= linear, nemo
    recipe = load_finetune_config().lora.target_modules
    assert hf_targets(recipe) == ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]


def test_a_target_outside_the_table_is_kept_for_the_checks_that_name_it():
    """A transformers name or a NeMo pattern in the recipe reaches the HF backend as written: its load refuses a name
    the model lacks (test_training_hf.py), the GPU plan names it for NeMo (test_validation_fault_suite.py)."""
    pattern = "*.layers.0.*.linear_proj"
    assert hf_targets(["linear_proj", "q_a_proj", pattern]) == ["o_proj", "q_a_proj", pattern]
    assert hf_targets(["linear_fc1", "linear_fc2"]) == ["gate_proj", "up_proj", "down_proj"]


def test_the_hf_backend_gets_the_recipes_lora_and_a_profile_states_why_a_value_differs(tmp_path):
    settings = load_settings(env={}, dotenv_path=tmp_path / "none")
    recipe = settings.finetune.lora
    for profile in settings.profiles.values():
        lora = profile.training.lora
        assert (lora.rank, lora.alpha, lora.dropout) == (recipe.rank, recipe.alpha, recipe.dropout)
        assert lora.target_modules == hf_targets(recipe.target_modules)

    config_dir = config_clone(tmp_path)
    toy = config_dir / "profiles" / "toy.yaml"
    edit_yaml(toy, lambda r: r["training"].update(lora_overrides={"alpha": 64, "reason": "a reason stated"}))
    changed = load_settings(env={}, dotenv_path=tmp_path / "none", config_dir=config_dir).profiles["toy"].training.lora
    assert (changed.rank, changed.alpha) == (recipe.rank, 64)

    edit_yaml(toy, lambda r: r["training"].update(lora_overrides={"alpha": 64}))  # no reason
    with pytest.raises(ConfigError, match=r"toy.yaml.*reason"):
        load_settings(env={}, dotenv_path=tmp_path / "none", config_dir=config_dir)
    written = {"rank": 8, "alpha": 8, "target_modules": ["o_proj"]}
    edit_yaml(toy, lambda r: r["training"].update(lora_overrides=None, lora=written))
    with pytest.raises(ConfigError, match=r"toy.yaml: field 'training.lora': the LoRA comes from .*finetune.yaml"):
        load_settings(env={}, dotenv_path=tmp_path / "none", config_dir=config_dir)
