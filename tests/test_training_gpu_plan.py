"""The GPU plan checked on CPU: the architecture from the release's reference config or a real checkpoint's headers,
the memory estimator against published layouts, the plan's checks on the shipped configs, LoRA names and the
knowledge cutoff. (The launcher layer's items: test_launchers_plan_checks.py.)"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from config_helpers import config_clone, edit_yaml, write_nemo_data

from sftc_assets.checkpoints.convert import plan_conversion
from sftc_assets.checkpoints.toy_model import make_toy_checkpoint
from sftc_assets.training import memory
from sftc_assets.training.architecture import architecture_of
from sftc_assets.training.gpu_plan import build_gpu_plan
from sftc_core.market import first_unseen_date
from sftc_assets.training.nemo_config import lora_target_problems
from sftc_core.checks import FAIL, NOT_CHECKED, PASS, TARGET_CLUSTER
from sftc_core.configs import CONFIG_DIR, load_finetune_config, read_model_config
from sftc_core.settings import load_settings
from sftc_resources.launchers.plan_checks import gpu_plan_launch_checks

REFERENCE = CONFIG_DIR / "models" / "deepseek-v3.json"


def reference_architecture():
    return architecture_of(None, read_model_config(REFERENCE), str(REFERENCE))


def _checks(plan) -> dict:
    return {check.name: check for check in plan.checks}


@pytest.fixture
def with_data(data_dir):
    """The data dir with NeMo JSONL as the export writes it."""
    write_nemo_data(data_dir / "nemo_jsonl", load_settings().sft)
    return data_dir


# --- the architecture -----------------------------------------------------------------------------


def test_the_reference_config_is_deepseek_v3_as_released():
    arch = reference_architecture()
    assert (arch.layers, arch.dense_layers, arch.experts, arch.shared_experts, arch.experts_per_token) == (61, 3, 256, 1, 8)
    assert (arch.heads, arch.hidden, arch.q_lora_rank, arch.kv_lora_rank, arch.vocab, arch.mtp_layers) == (128, 7168, 1536, 512, 129280, 1)
    # The release's README_WEIGHTS.md: 671B parameters in the main model, 11.5B more in the MTP module, 0.9B embedding.
    assert abs(arch.main_params / 671e9 - 1) < 0.002
    assert abs(arch.mtp_unique_params / 11.5e9 - 1) < 0.02
    assert round(arch.embedding_params / 1e9, 1) == round(arch.head_params / 1e9, 1) == 0.9
    assert "671.0B parameters" in arch.summary()


@pytest.mark.parametrize("fp8", [True, False])
def test_parameter_counts_match_a_real_checkpoints_headers(tmp_path, fp8):
    """The formulas per part against the tensors of a real (toy) DeepSeek-V3 checkpoint, read from its headers."""
    checkpoint = tmp_path / "ckpt"
    make_toy_checkpoint(checkpoint, ["buy hold sell " * 40, "margins and momentum " * 40], fp8=fp8, vocab_size=300)
    arch = architecture_of(checkpoint, read_model_config(REFERENCE))  # reachable: the checkpoint wins over the reference
    assert "safetensors headers" in arch.source and arch.layers == 3
    assert arch.counted_params == arch.checkpoint_params  # the MTP layer's tensors too, by the release's formula
    assert arch.mtp_layers == 1 and arch.checkpoint_params > arch.main_params + arch.mtp_unique_params
    tensor_bytes = sum(f.stat().st_size - 8 - int.from_bytes(f.read_bytes()[:8], "little") for f in checkpoint.glob("*.safetensors"))
    assert arch.bf16_checkpoint_bytes == (plan_conversion(checkpoint).total_size if fp8 else tensor_bytes)


# --- the memory estimator -------------------------------------------------------------------------


def test_nemos_five_node_lora_recipe_fits_80gb_and_full_finetuning_on_it_does_not():
    arch, lora = reference_architecture(), load_finetune_config()  # the shipped config is NeMo's LoRA recipe
    assert (lora.nodes, lora.parallelism.tensor, lora.parallelism.pipeline, lora.gpu_memory_gb) == (5, 8, 5, 80)
    fits = memory.gpu_memory(arch, lora)
    assert fits.fits and fits.needed_bytes > 0.5 * fits.available_bytes  # fits, and not by an estimate that forgot half the model
    full = memory.gpu_memory(arch, lora.model_copy(update={"peft": "none"}))
    assert not full.fits and full.needed_bytes > 3 * full.available_bytes
    terms = {term.name for term in full.terms}
    assert {"fp32 gradients (full fine-tune)", "Adam master weights and moments (distributed optimizer)"} <= terms
    assert sum(term.bytes for term in fits.terms) == fits.needed_bytes
    assert any(line.startswith("total: ") and "available" in line for line in fits.lines())


def test_the_estimate_follows_sequence_length_recompute_and_pipeline():
    arch, config = reference_architecture(), load_finetune_config()

    def term(cfg, name: str) -> int:
        return next(t.bytes for t in memory.gpu_memory(arch, cfg).terms if t.name == name)

    base = term(config, "activations")
    assert term(config.model_copy(update={"seq_length": 4096}), "activations") == pytest.approx(2 * base, rel=0.01)
    assert term(config.model_copy(update={"recompute": "full"}), "activations") < base / 4
    wider = config.model_copy(update={"nodes": 10, "parallelism": config.parallelism.model_copy(update={"pipeline": 10, "layers_in_first_pipeline_stage": 7, "layers_in_last_pipeline_stage": 6})})
    assert term(wider, "bf16 weights") < 0.6 * term(config, "bf16 weights")
    stages = memory.stage_estimates(arch, config)
    assert [e.what for e in stages][0] == "a rank of pipeline stage 0 (13 layers)" and len(stages) == 5
    assert "logits and loss" in {t.name for t in stages[-1].terms} and "logits and loss" not in {t.name for t in stages[0].terms}


def test_host_ram_and_disk_against_the_cluster():
    arch, config = reference_architecture(), load_finetune_config()
    ram = memory.import_host_memory(arch, 2 * 10**12, "2 TB")
    assert 1.2e12 <= ram.needed_bytes <= 1.7e12 and ram.fits  # the anchors: 1.2 to 1.6 TB for the 671B model
    assert not memory.import_host_memory(arch, 1024 * 2**30, "1Ti").fits
    disk = memory.data_volume(arch, config, None, "unknown")
    assert disk.fits is None and {"BF16 checkpoint (bf16_checkpoint)", "NeMo checkpoint (nemo_model)", "merged LoRA checkpoint (NeMo)"} <= {t.name for t in disk.terms}
    full = memory.data_volume(arch, config.model_copy(update={"peft": "none"}), 8 * 2**40, "8Ti")
    assert not full.fits  # three full checkpoints with their Adam state


# --- the plan on the shipped configs ---------------------------------------------------------------


def test_the_shipped_plan_holds_and_shows_its_arithmetic(with_data):
    plan = build_gpu_plan(load_settings(), check_nemo=False, launch_checks=gpu_plan_launch_checks)
    checks = _checks(plan)
    assert plan.passed, [c.line for c in plan.checks if c.status == FAIL]
    for name in ("model architecture", "parallel layout", "GPU memory", "host RAM", "data volume", "batch arithmetic", "LoRA targets",
                 "sequence length", "answer length", "special tokens", "knowledge cutoff", "launch plan"):  # fmt: skip
        assert checks[name].status == PASS, checks[name].line
    assert "#SBATCH --nodes=5" in checks["launch plan"].details  # the full profile's Slurm job, rendered
    assert checks["target cluster"].scope == TARGET_CLUSTER and checks["target cluster"].status == NOT_CHECKED
    assert any(line.startswith("bf16 weights: ") for line in checks["GPU memory"].details)
    assert any(line.startswith("total: ") for line in checks["data volume"].details)
    assert "13 + 12 + 12 + 12 + 12 = 61" in " ".join(checks["parallel layout"].details)
    assert "at most one token per UTF-8 byte" in " ".join(checks["sequence length"].details)
    assert json.loads(json.dumps(plan.as_dict()))["passed"] is True


def test_without_data_the_data_checks_say_not_checked(data_dir):
    checks = _checks(build_gpu_plan(load_settings(), check_nemo=False))
    for name in ("sequence length", "answer length", "special tokens"):
        assert checks[name].status == NOT_CHECKED and "nemo_jsonl" in checks[name].fix


def test_a_reachable_checkpoint_is_read_from_its_headers_and_tokenizer(tmp_path, data_dir, monkeypatch):
    """Where the checkpoint is on shared storage the plan sizes that model, with its own tokenizer."""
    checkpoint = tmp_path / "DeepSeek-V3"
    make_toy_checkpoint(checkpoint, ["buy hold sell " * 40, "Ticker AAPL margins " * 40], fp8=True, vocab_size=300)
    config_dir = config_clone(tmp_path)
    edit_yaml(config_dir / "profiles" / "full.yaml", lambda r: r["model"].update(base_checkpoint_path=str(checkpoint), vocab_size=300))
    settings = load_settings(env={"SFTC_DATA_DIR": str(data_dir)}, dotenv_path=tmp_path / "none", config_dir=config_dir)
    write_nemo_data(data_dir / "nemo_jsonl", settings.sft)
    checks = _checks(build_gpu_plan(settings, check_nemo=False))
    assert checks["model architecture"].status == PASS and "3 layers" in checks["model architecture"].found
    assert "safetensors headers" in checks["model architecture"].details[0]
    # The shipped 5-stage pipeline cannot split this model's 3 layers: the plan says so against the model it read.
    assert checks["parallel layout"].status == FAIL and "exceeds the model's 3 layers" in checks["parallel layout"].found
    assert f"with the model's tokenizer ({checkpoint})" in checks["sequence length"].details[0]


def test_the_tags_are_text_to_the_base_tokenizer_and_one_token_each_once_registered(tmp_path):
    """The two backends' readings of the format's tags: NeMo tokenizes them with the imported checkpoint's own
    tokenizer, as text that decodes back to the tag (the parser reads it); the Hugging Face backend registers them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftc_assets.training.hf_backend import add_special_tokens

    checkpoint = tmp_path / "ckpt"
    make_toy_checkpoint(checkpoint, ["<reasoning>up</reasoning><support>a</support><action>BUY</action> " * 40], vocab_size=300)
    tags = list(load_settings().sft.special_tokens)
    base = AutoTokenizer.from_pretrained(checkpoint)
    for tag in tags:
        ids = base(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) > 1 and base.decode(ids) == tag
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert len(add_special_tokens(model, base, tags)) == len(tags)
    assert all(len(base(tag, add_special_tokens=False)["input_ids"]) == 1 for tag in tags)


def test_lora_targets_must_be_nemos_module_names():
    assert lora_target_problems(["linear_q_down_proj", "*.layers.0.*.linear_proj", "linear_fc1"]) == []
    problems = lora_target_problems(["q_a_proj", "linear_qkv", "attn"])
    assert problems[0] == "'q_a_proj' (that is the transformers name; NeMo calls it linear_q_down_proj)"
    assert "no fused QKV" in problems[1] and "not a module of NeMo's DeepSeek-V3" in problems[2]


def test_the_first_unseen_date_counts_trading_sessions():
    # DeepSeek-V3's cutoff 2024-12-26 (Thursday): entry 12-27, five sessions on (New Year's Day closed) exit 2025-01-06.
    assert first_unseen_date(dt.date(2024, 12, 26), 5) == dt.date(2025, 1, 7)
    assert first_unseen_date(dt.date(2024, 12, 26), 1) == dt.date(2024, 12, 31)


def test_the_reference_config_is_read_at_load_as_the_profile_names_it():
    settings = load_settings()
    assert Path(CONFIG_DIR / settings.full_profile.model.reference_config) == REFERENCE
    assert settings.reference_models == {"full": read_model_config(REFERENCE)}
