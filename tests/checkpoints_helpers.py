"""Test inputs for the checkpoint tests: FP8 checkpoints written by hand (not by our toy builder), and an
independent numpy reference of the dequantization (fp8 bits decoded by hand, rounding done on bits)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from sftc_assets.checkpoints.fp8 import random_fp8, random_scale  # noqa: F401  (the tests import them from here too)

BLOCK = 128


def write_checkpoint(
    root: Path,
    shards: list[dict[str, torch.Tensor]],
    config: dict | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Shards `model-0000K-of-0000N.safetensors` holding exactly the given tensors, the index, config.json."""
    root.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for number, tensors in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, root / name, metadata={"format": "pt"})
        for key, tensor in tensors.items():
            weight_map[key] = name
            total += tensor.numel() * tensor.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = (
        config
        if config is not None
        else {"model_type": "test", "quantization_config": {"quant_method": "fp8", "weight_block_size": [BLOCK, BLOCK]}}
    )
    (root / "config.json").write_text(json.dumps(config, indent=2))
    for name, text in (extra_files or {}).items():
        (root / name).write_text(text)
    return root


def awkward_checkpoint(root: Path, seed: int = 0) -> Path:
    """FP8 weights of awkward shapes (1x1, 129x127, 300x257, ...), scales stored in other shards than their
    weights (one shard of scales only), and unquantized tensors of several dtypes."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "model.layers.0.self_attn.q_a_proj.weight": (1, 1),
        "model.layers.0.self_attn.kv_b_proj.weight": (129, 127),
        "model.layers.0.mlp.gate_proj.weight": (128, 128),
        "model.layers.0.mlp.up_proj.weight": (300, 257),
        "model.layers.0.mlp.down_proj.weight": (256, 384),
        "model.layers.1.mlp.experts.0.up_proj.weight": (127, 1),
    }
    w = {name: random_fp8(shape, g) for name, shape in shapes.items()}
    s = {name + "_scale_inv": random_scale(shape, g) for name, shape in shapes.items()}
    names = list(shapes)
    shard1 = {
        names[0]: w[names[0]],
        names[0] + "_scale_inv": s[names[0] + "_scale_inv"],
        names[1]: w[names[1]],  # its scale is in shard 3
        "model.embed_tokens.weight": torch.randn(50, 8, generator=g).to(torch.bfloat16),
        "model.layers.0.input_layernorm.weight": torch.randn(8, generator=g).to(torch.float16),
    }
    shard2 = {
        names[2]: w[names[2]],
        names[3]: w[names[3]],
        names[4]: w[names[4]],
        names[2] + "_scale_inv": s[names[2] + "_scale_inv"],
        "model.layers.1.mlp.gate.e_score_correction_bias": torch.randn(4, generator=g),
        "model.layers.1.mlp.gate.weight": torch.randn(4, 8, generator=g).to(torch.bfloat16),
        "model.step": torch.tensor([7], dtype=torch.int64),
        "model.mask": torch.tensor([True, False, True]),
        "model.scalar": torch.tensor(2.5, dtype=torch.float64),
    }
    shard3 = {  # scales only: nothing of this shard survives the conversion
        names[1] + "_scale_inv": s[names[1] + "_scale_inv"],
        names[3] + "_scale_inv": s[names[3] + "_scale_inv"],
    }
    shard4 = {
        names[5]: w[names[5]],
        names[5] + "_scale_inv": s[names[5] + "_scale_inv"],
        names[4] + "_scale_inv": s[names[4] + "_scale_inv"],
        "lm_head.weight": torch.randn(50, 8, generator=g).to(torch.bfloat16),
    }
    extra = {
        "tokenizer.json": '{"version": "1.0"}',
        "tokenizer_config.json": '{"bos_token": "<s>"}',
        "generation_config.json": '{"bos_token_id": 0}',
        "modeling_deepseek.py": "# remote code\n",
        "README.md": "model card\n",
        ".cache_marker": "not part of the model\n",
    }
    return write_checkpoint(root, [shard1, shard2, shard3, shard4], extra_files=extra)


def reference_dequant_bits(weight: torch.Tensor, scale: torch.Tensor) -> np.ndarray:
    """bf16 bits of bf16(float32(w) * scale[i // 128, j // 128]) computed without torch's casts.

    The fp8 value is decoded from its bits (sign, 4-bit exponent with bias 7, 3-bit mantissa), multiplied
    by the scale in float64 (exact: 4 x 24 significant bits), rounded once to float32 (the kernel's
    multiply), then to bf16 by round-to-nearest-even on the float32 bits.
    """
    bits = weight.view(torch.uint8).numpy().astype(np.int64)
    sign = np.where(bits & 0x80, -1.0, 1.0)
    exponent, mantissa = (bits >> 3) & 0xF, bits & 0x7
    value = sign * np.where(exponent == 0, mantissa / 8.0 * 2.0**-6, (1 + mantissa / 8.0) * np.exp2(exponent - 7.0))
    value[(exponent == 15) & (mantissa == 7)] = np.nan
    rows, cols = weight.shape
    block_scale = scale.numpy().astype(np.float64)[np.arange(rows)[:, None] // BLOCK, np.arange(cols)[None, :] // BLOCK]
    with np.errstate(over="ignore"):  # overflow to inf is part of the math being checked
        product = (value * block_scale).astype(np.float32)
    f32 = product.view(np.uint32).astype(np.uint64)
    bf16 = ((f32 + 0x7FFF + ((f32 >> 16) & 1)) >> 16).astype(np.uint16)
    bf16[np.isnan(product)] = 0x7FC0  # any NaN; compared by position, not payload
    return bf16
