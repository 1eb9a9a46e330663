"""What the checks on a converted checkpoint look at: scale tensors left, non-finite values, shapes against
the config (the names and shapes a DeepSeek-V3 of that config must have), and that it loads and generates."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sftc_assets.checkpoints.fp8 import SCALE_SUFFIX
from sftc_assets.checkpoints.safetensors_io import read_checkpoint_headers, read_tensor

FLOAT_DTYPES = ("F8_E4M3", "F8_E5M2", "BF16", "F16", "F32", "F64")


@dataclass
class CheckpointScan:
    tensors: int = 0
    bytes: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)
    scale_tensors: list[str] = field(default_factory=list)
    nonfinite: list[str] = field(default_factory=list)  # "name (shard): N non-finite of M"
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[str] = field(default_factory=list)  # "name: [a, b], config says [c, d]"

    @property
    def shapes_ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor a DeepSeek-V3 checkpoint of this config holds (per-expert names, MTP layers included)."""
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    heads = config["num_attention_heads"]
    nope, rope, v_dim = config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["v_head_dim"]
    q_rank, kv_rank = config.get("q_lora_rank"), config["kv_lora_rank"]
    layers = config["num_hidden_layers"]
    mtp = config.get("num_nextn_predict_layers", 0) or 0
    dense_layers = config.get("first_k_dense_replace", 0) or 0
    moe_inter, inter = config["moe_intermediate_size"], config["intermediate_size"]
    experts, shared = config["n_routed_experts"], config.get("n_shared_experts") or 0

    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
    }
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, hidden)

    def mlp(prefix: str, inner: int) -> None:
        shapes[f"{prefix}.gate_proj.weight"] = (inner, hidden)
        shapes[f"{prefix}.up_proj.weight"] = (inner, hidden)
        shapes[f"{prefix}.down_proj.weight"] = (hidden, inner)

    for layer in range(layers + mtp):
        p = f"model.layers.{layer}"
        shapes[f"{p}.input_layernorm.weight"] = (hidden,)
        shapes[f"{p}.post_attention_layernorm.weight"] = (hidden,)
        a = f"{p}.self_attn"
        if q_rank:
            shapes[f"{a}.q_a_proj.weight"] = (q_rank, hidden)
            shapes[f"{a}.q_a_layernorm.weight"] = (q_rank,)
            shapes[f"{a}.q_b_proj.weight"] = (heads * (nope + rope), q_rank)
        else:
            shapes[f"{a}.q_proj.weight"] = (heads * (nope + rope), hidden)
        shapes[f"{a}.kv_a_proj_with_mqa.weight"] = (kv_rank + rope, hidden)
        shapes[f"{a}.kv_a_layernorm.weight"] = (kv_rank,)
        shapes[f"{a}.kv_b_proj.weight"] = (heads * (nope + v_dim), kv_rank)
        shapes[f"{a}.o_proj.weight"] = (hidden, heads * v_dim)
        if layer < dense_layers:
            mlp(f"{p}.mlp", inter)
            continue
        shapes[f"{p}.mlp.gate.weight"] = (experts, hidden)
        shapes[f"{p}.mlp.gate.e_score_correction_bias"] = (experts,)
        for expert in range(experts):
            mlp(f"{p}.mlp.experts.{expert}", moe_inter)
        if shared:
            mlp(f"{p}.mlp.shared_experts", moe_inter * shared)
        if layer >= layers:  # DeepSeek's multi-token-prediction module around the extra decoder layer
            shapes.update({f"{p}.enorm.weight": (hidden,), f"{p}.hnorm.weight": (hidden,)})
            shapes[f"{p}.eh_proj.weight"] = (hidden, 2 * hidden)
            shapes[f"{p}.embed_tokens.weight"] = (vocab, hidden)
            shapes[f"{p}.shared_head.norm.weight"] = (hidden,)
            shapes[f"{p}.shared_head.head.weight"] = (vocab, hidden)
    return shapes


def scan_checkpoint(checkpoint: Path | str, check_values: bool = True) -> CheckpointScan:
    """One pass over a checkpoint: headers against config.json, and (check_values) every value finite.

    Reads one tensor at a time, so memory stays at the largest tensor whatever the model size.
    """
    checkpoint = Path(checkpoint)
    weight_map, headers = read_checkpoint_headers(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    expected = expected_shapes(config)
    scan = CheckpointScan()
    for shard, header in sorted(headers.items()):
        with open(header.path, "rb") as fh:
            for name in sorted(n for n, s in weight_map.items() if s == shard):
                info = header.tensors[name]
                scan.tensors += 1
                scan.bytes += info.nbytes
                scan.dtypes[info.dtype] = scan.dtypes.get(info.dtype, 0) + 1
                if name.endswith(SCALE_SUFFIX):
                    scan.scale_tensors.append(name)
                elif name not in expected:
                    scan.unexpected.append(name)
                elif info.shape != expected[name]:
                    scan.wrong_shape.append(f"{name}: {list(info.shape)}, config says {list(expected[name])}")
                if check_values and info.dtype in FLOAT_DTYPES:
                    bad = int((~torch.isfinite(read_tensor(fh, info).float())).sum())
                    if bad:
                        scan.nonfinite.append(f"{name} ({shard}): {bad} non-finite of {info.numel}")
    scan.missing = sorted(set(expected) - set(weight_map))
    return scan


def load_and_generate(checkpoint: Path | str, prompt: str, max_new_tokens: int = 16) -> dict:
    """Load with transformers' own classes (float32, CPU) and greedily generate a few tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model.eval()
    inputs = tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = generated[0, inputs["input_ids"].shape[1] :]
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "new_tokens": int(new_tokens.numel()),
        "text": tokenizer.decode(new_tokens, skip_special_tokens=False),
    }


def shard_table(checkpoint: Path | str) -> list[dict]:
    """One row per shard: tensors, their dtypes and bytes (for people reading the asset's metadata)."""
    weight_map, headers = read_checkpoint_headers(checkpoint)
    rows = []
    for shard, header in sorted(headers.items()):
        names = [n for n, s in weight_map.items() if s == shard]
        dtypes: dict[str, int] = {}
        for name in names:
            dtypes[header.tensors[name].dtype] = dtypes.get(header.tensors[name].dtype, 0) + 1
        rows.append(
            {
                "shard": shard,
                "tensors": len(names),
                "dtypes": ", ".join(f"{d} x{n}" for d, n in sorted(dtypes.items())),
                "bytes": header.path.stat().st_size,
            }
        )
    return rows
