"""The toy DeepSeek-V3: real tensor names, the exact FP8 release layout, a tokenizer that loads, training and
generation on CPU, determinism; and its conversion cross-checked against transformers' own FP8 dequantization."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sftc_assets.checkpoints.convert import convert_fp8_checkpoint
from sftc_assets.checkpoints.fp8 import (
    QUANTIZATION_CONFIG,
    dequantize_fp8_torch,
    is_quantized_weight,
)
from sftc_assets.checkpoints.mtp import carry_mtp_layers
from sftc_assets.checkpoints.toy_model import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    corpus_texts_from,
    make_toy_checkpoint,
)
from sftc_assets.checkpoints.verify import expected_shapes, scan_checkpoint
from sftc_jobs.cli import main as sftc_main

CORPUS = [
    "### Instruction:\nYou are an equity analyst.\n\n### Input:\nTicker: AAPL\nFacts:\n- close up 3.1% over 5 days",
    "<reasoning>Momentum is strong.</reasoning><support>close up 3.1%</support><action>BUY</action>",
    "Ticker: IBM\nFacts:\n- close down 4.0% over 5 days <action>SELL</action> é ✓",
] * 20


def _tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(checkpoint.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toy")
    make_toy_checkpoint(root / "bf16", CORPUS, seed=0)
    summary = make_toy_checkpoint(root / "fp8", CORPUS, seed=0, fp8=True)
    convert_fp8_checkpoint(root / "fp8", root / "converted", device="cpu", progress=False)
    return {"bf16": root / "bf16", "fp8": root / "fp8", "converted": root / "converted", "summary": summary}


def test_toy_has_the_real_model_tensor_names_and_shapes(toy):
    tensors = _tensors(toy["bf16"])
    config = json.loads((toy["bf16"] / "config.json").read_text())
    assert {n: tuple(t.shape) for n, t in tensors.items()} == expected_shapes(config)
    for name in (
        "model.layers.0.mlp.gate_proj.weight",  # dense first layer
        "model.layers.1.mlp.experts.3.down_proj.weight",  # per-expert keys, as NeMo's importer maps them
        "model.layers.1.mlp.gate.weight",
        "model.layers.1.mlp.gate.e_score_correction_bias",
        "model.layers.2.mlp.shared_experts.up_proj.weight",
        "model.layers.2.self_attn.q_a_proj.weight",
        "model.layers.2.self_attn.q_a_layernorm.weight",
        "model.layers.2.self_attn.kv_a_proj_with_mqa.weight",
        "model.layers.2.self_attn.kv_b_proj.weight",
    ):
        assert name in tensors, name
    assert config["first_k_dense_replace"] == 1 and config["n_routed_experts"] >= 2 and config["n_shared_experts"] == 1
    assert 100_000 < toy["summary"]["parameters"] < 1_000_000


def test_fp8_layout_is_the_release_layout(toy):
    fp8_dir = toy["fp8"]
    tensors = _tensors(fp8_dir)
    index = json.loads((fp8_dir / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in fp8_dir.glob("*.safetensors"))
    assert len(shards) >= 3 and shards == [
        f"model-{k:05d}-of-{len(shards):05d}.safetensors" for k in range(1, len(shards) + 1)
    ]
    assert set(index["weight_map"]) == set(tensors) and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    quantized = {n for n, t in tensors.items() if t.dtype == torch.float8_e4m3fn}
    weights = {n for n in tensors if not n.endswith("_scale_inv")}
    assert quantized == {n for n in weights if is_quantized_weight(n, tensors[n].shape)}
    assert {n.split(".")[-2] for n in quantized} == {
        "q_a_proj",
        "q_b_proj",
        "kv_a_proj_with_mqa",
        "kv_b_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    for name in quantized:
        scale = tensors[name + "_scale_inv"]
        rows, cols = tensors[name].shape
        assert scale.dtype == torch.float32 and tuple(scale.shape) == (math.ceil(rows / 128), math.ceil(cols / 128))
    assert any(tuple(tensors[n + "_scale_inv"].shape) != (1, 1) for n in quantized)  # some weight spans several blocks
    for name in weights - quantized:
        expected = torch.float32 if name.endswith("e_score_correction_bias") else torch.bfloat16
        assert tensors[name].dtype == expected, name
    split = [
        n
        for n in index["weight_map"]
        if n.endswith("_scale_inv") and index["weight_map"][n] != index["weight_map"][n[: -len("_scale_inv")]]
    ]
    assert split and toy["summary"]["scales_in_other_shard"] == len(split)
    config = json.loads((fp8_dir / "config.json").read_text())
    assert config["quantization_config"] == QUANTIZATION_CONFIG and config["model_type"] == "deepseek_v3"
    with safe_open(fp8_dir / shards[0], "pt") as fh:
        assert fh.metadata() == {"format": "pt"}


def test_block_scales_are_amax_over_448(toy):
    tensors = _tensors(toy["fp8"])
    original = _tensors(toy["bf16"])
    name = "model.layers.0.mlp.gate_proj.weight"  # 192 x 64: two row blocks
    scale = tensors[name + "_scale_inv"]
    weight = tensors[name].float()
    for block in range(scale.shape[0]):
        assert weight[block * 128 : (block + 1) * 128].abs().max() == 448  # the block's largest value hits the fp8 max
    # the fp8 copy is the bf16 model's weights to within fp8 precision (both come from the same fp32 init)
    restored = dequantize_fp8_torch(tensors[name], scale).float()
    assert torch.allclose(restored, original[name].float(), rtol=0.07, atol=1e-6)


def test_same_seed_same_bytes_other_seed_other_weights(toy, tmp_path):
    make_toy_checkpoint(tmp_path / "again", CORPUS, seed=0, fp8=True)
    for path in toy["fp8"].iterdir():
        assert (tmp_path / "again" / path.name).read_bytes() == path.read_bytes(), path.name
    make_toy_checkpoint(tmp_path / "other", CORPUS, seed=1, fp8=True)
    shard = sorted(toy["fp8"].glob("*.safetensors"))[-1].name
    assert (tmp_path / "other" / shard).read_bytes() != (toy["fp8"] / shard).read_bytes()
    assert (tmp_path / "other" / "tokenizer.json").read_bytes() == (toy["fp8"] / "tokenizer.json").read_bytes()


def test_tokenizer_loads_with_autotokenizer_and_round_trips(toy):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(toy["bf16"])
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)
    text = CORPUS[2]
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) < len(text.encode())  # BPE merged something
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert len(tokenizer) <= json.loads((toy["bf16"] / "config.json").read_text())["vocab_size"]


def test_toy_trains_in_fp32_on_cpu_and_generates(toy):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(toy["bf16"])
    model = AutoModelForCausalLM.from_pretrained(toy["bf16"], dtype=torch.float32)
    batch = tokenizer(CORPUS[:3], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(8):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8, losses
    model.eval()
    out = model.generate(**tokenizer(["Ticker: AAPL"], return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > 1 + len(tokenizer("Ticker: AAPL")["input_ids"]) - 1


def test_converted_toy_equals_the_torch_math_and_loads(toy):
    fp8, out = _tensors(toy["fp8"]), _tensors(toy["converted"])
    assert set(out) == {n for n in fp8 if not n.endswith("_scale_inv")}
    for name, tensor in out.items():
        if fp8[name].dtype == torch.float8_e4m3fn:
            assert torch.equal(
                tensor.view(torch.int16), dequantize_fp8_torch(fp8[name], fp8[name + "_scale_inv"]).view(torch.int16)
            )
        else:
            assert torch.equal(tensor, fp8[name])
    scan = scan_checkpoint(toy["converted"])
    assert scan.shapes_ok and not scan.scale_tensors and not scan.nonfinite


def test_conversion_agrees_with_transformers_fp8_dequantize(toy, tmp_path):
    """transformers 5 dequantizes FP8 on CPU (FineGrainedFP8Config(dequantize=True)), but infers the block size
    from the scale grid (rows // grid rows): it is only right where each dimension is a multiple of 128 or
    within one block. Those tensors must match ours bit for bit; the others it gets wrong (e.g. 192 x 64 as
    96-row blocks) are not compared, and those whose sides the grid does not divide (the release's 576-row
    kv_a_proj_with_mqa, q_b_proj's 320 rows here) it refuses: they are left out of the copy it loads."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, FineGrainedFP8Config

    fp8 = _tensors(toy["fp8"])
    refused = {
        n
        for n, t in fp8.items()
        if t.dtype == torch.float8_e4m3fn and any(side % math.ceil(side / 128) for side in t.shape)
    }
    assert {n.split(".")[-2] for n in refused} == {"q_b_proj", "kv_a_proj_with_mqa"}
    save_file(
        {n: t for n, t in fp8.items() if n not in refused and n.removesuffix("_scale_inv") not in refused},
        tmp_path / "model.safetensors",
        metadata={"format": "pt"},
    )
    (tmp_path / "config.json").write_bytes((toy["fp8"] / "config.json").read_bytes())
    dequantize = FineGrainedFP8Config(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=dequantize, dtype=torch.bfloat16)
    theirs = model.state_dict()
    ours = _tensors(toy["converted"])
    config = json.loads((toy["converted"] / "config.json").read_text())

    def fits(shape) -> bool:
        return all(d <= 128 or d % 128 == 0 for d in shape)

    compared = 0
    for name, tensor in ours.items():
        if ".experts." in name:
            continue
        if name in theirs and fits(tensor.shape):
            assert torch.equal(theirs[name].to(tensor.dtype), tensor), name
            compared += 1
    for layer in range(config["first_k_dense_replace"], config["num_hidden_layers"]):  # fused experts, split back
        prefix = f"model.layers.{layer}.mlp.experts"
        for expert in range(config["n_routed_experts"]):
            gate_up = torch.cat(
                [ours[f"{prefix}.{expert}.gate_proj.weight"], ours[f"{prefix}.{expert}.up_proj.weight"]]
            )
            assert torch.equal(theirs[f"{prefix}.gate_up_proj"][expert], gate_up)
            assert torch.equal(theirs[f"{prefix}.down_proj"][expert], ours[f"{prefix}.{expert}.down_proj.weight"])
            compared += 3
    assert compared >= 60


def test_corpus_texts_from_file_and_directory(tmp_path):
    (tmp_path / "training.jsonl").write_text(
        json.dumps({"input": "prompt one", "output": "<action>BUY</action>"}) + "\n"
    )
    (tmp_path / "2012-01.jsonl").write_text(
        json.dumps({"id": "a-1", "support": ["up 3%", "buyback"], "horizon_days": 5}) + "\n"
    )
    (tmp_path / "2012-01.rejects.jsonl").write_text(json.dumps({"detail": "rejected text"}) + "\n")
    assert corpus_texts_from(tmp_path / "training.jsonl") == ["prompt one", "<action>BUY</action>"]
    assert corpus_texts_from(tmp_path) == ["a-1", "up 3%", "buyback", "prompt one", "<action>BUY</action>"]
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        corpus_texts_from(tmp_path / "missing")
    (tmp_path / "empty.jsonl").write_text(json.dumps({"n": 1}) + "\n")
    with pytest.raises(ValueError, match="no text"):
        corpus_texts_from(tmp_path / "empty.jsonl")
    with pytest.raises(ValueError, match="corpus_texts is empty"):
        make_toy_checkpoint(tmp_path / "out", [])
    assert not (tmp_path / "out").exists()


def test_cli_make_toy_checkpoint(tmp_path, data_dir, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"input": t, "output": "<action>HOLD</action>"}) + "\n" for t in CORPUS))
    assert (
        sftc_main(
            ["make-toy-checkpoint", "--out", str(tmp_path / "cli"), "--fp8", "--corpus", str(corpus), "--seed", "3"]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["fp8"] and summary["seed"] == 3 and summary["shards"] >= 3
    assert summary["pretraining"] is None  # --corpus: that corpus's tokenizer, random weights
    assert (tmp_path / "cli" / "model.safetensors.index.json").is_file()
    # without --corpus it reads the train split of the data dir's hf_splits (as the asset), and says so when there is
    # none
    assert sftc_main(["make-toy-checkpoint", "--out", str(tmp_path / "none")]) == 2
    assert "hf_splits: not a saved DatasetDict" in capsys.readouterr().err


# --- the release's shape where code paths depend on it, and the multi-token-prediction layer --------------------


def test_toy_has_the_release_mla_width_group_routing_and_a_dense_layer_first(toy):
    config = json.loads((toy["fp8"] / "config.json").read_text())
    assert (config["kv_lora_rank"], config["qk_rope_head_dim"]) == (512, 64)  # vLLM's CPU MLA kernel: 576 only
    assert 1 < config["n_group"] and 1 <= config["topk_group"] < config["n_group"]
    per_group = config["n_routed_experts"] // config["n_group"]
    assert config["n_routed_experts"] % config["n_group"] == 0
    assert config["num_experts_per_tok"] <= config["topk_group"] * per_group
    assert 1 <= config["first_k_dense_replace"] < config["num_hidden_layers"]
    assert config["architectures"] == ["DeepseekV3ForCausalLM"] and config["num_nextn_predict_layers"] == 1
    assert config["hidden_size"] <= 64 and toy["summary"]["mtp_parameters"] > 0  # the other sizes stay tiny


def test_the_mtp_layer_is_written_as_the_release_writes_it(toy):
    tensors, config = _tensors(toy["fp8"]), json.loads((toy["fp8"] / "config.json").read_text())
    mtp = f"model.layers.{config['num_hidden_layers']}"
    names = {n.removeprefix(mtp + ".") for n in tensors if n.startswith(mtp + ".")}
    assert {
        "enorm.weight",
        "hnorm.weight",
        "eh_proj.weight",
        "embed_tokens.weight",
        "shared_head.norm.weight",
        "shared_head.head.weight",
    } <= names
    # a full decoder layer inside it, FP8 with its scales as every layer's linears; a MoE block
    for part in (
        "self_attn.kv_a_proj_with_mqa.weight",
        "self_attn.kv_b_proj.weight",
        "mlp.experts.7.down_proj.weight",
        "mlp.shared_experts.up_proj.weight",
    ):
        assert tensors[f"{mtp}.{part}"].dtype == torch.float8_e4m3fn and f"{mtp}.{part}_scale_inv" in tensors
    assert tuple(tensors[f"{mtp}.self_attn.kv_a_proj_with_mqa.weight"].shape) == (576, 64)  # 4.5 blocks of 128 rows
    eh_proj = tensors[f"{mtp}.eh_proj.weight"]
    assert eh_proj.dtype == torch.bfloat16 and tuple(eh_proj.shape) == (64, 128)
    assert torch.equal(tensors[f"{mtp}.embed_tokens.weight"], tensors["model.embed_tokens.weight"])  # shared
    assert torch.equal(tensors[f"{mtp}.shared_head.head.weight"], tensors["lm_head.weight"])


def test_the_conversion_converts_the_mtp_layer(toy):
    converted = _tensors(toy["converted"])
    mtp = [n for n in converted if n.startswith("model.layers.3.")]
    assert len(mtp) > 40 and all(converted[n].dtype in (torch.bfloat16, torch.float32) for n in mtp)
    assert not any(n.endswith("_scale_inv") for n in converted)  # the MTP layer's scales went with the rest


def _without_mtp(source: Path, out: Path) -> Path:
    """The same checkpoint as if the release had no MTP layer: its tensors dropped, num_nextn_predict_layers 0."""
    from safetensors.torch import save_file

    out.mkdir()
    tensors = {n: t for n, t in _tensors(source).items() if not n.startswith("model.layers.3.")}
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "num_nextn_predict_layers": 0}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((source / name).read_bytes())
    return out


def test_transformers_loads_the_release_layout_ignoring_its_mtp_layer(toy, tmp_path):
    from transformers import AutoModelForCausalLM

    with_mtp = AutoModelForCausalLM.from_pretrained(toy["converted"], dtype=torch.float32)
    no_mtp = _without_mtp(toy["converted"], tmp_path / "no-mtp")
    without = AutoModelForCausalLM.from_pretrained(no_mtp, dtype=torch.float32)
    assert with_mtp.config.num_nextn_predict_layers == 1 and len(with_mtp.model.layers) == 3  # no MTP module is built
    ids = torch.tensor([[0, 5, 9, 17, 33]])
    with torch.no_grad():
        assert torch.equal(with_mtp(ids).logits, without(ids).logits)


def test_a_fine_tuned_save_gets_the_base_mtp_layer_back(toy, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(toy["converted"], dtype=torch.float32)
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)  # as if fine-tuned
    model.save_pretrained(tmp_path / "sft")
    assert not any(n.startswith("model.layers.3.") for n in _tensors(tmp_path / "sft"))  # transformers dropped it
    assert carry_mtp_layers(toy["converted"], tmp_path / "sft") > 40
    base, sft = _tensors(toy["converted"]), _tensors(tmp_path / "sft")
    assert scan_checkpoint(tmp_path / "sft").shapes_ok
    assert torch.equal(sft["model.layers.3.eh_proj.weight"], base["model.layers.3.eh_proj.weight"])
    assert torch.equal(sft["model.layers.3.embed_tokens.weight"], sft["model.embed_tokens.weight"])  # the model's own
    assert carry_mtp_layers(_without_mtp(toy["converted"], tmp_path / "no-mtp"), tmp_path / "sft") == 0
