"""DeepSeek-V3's block FP8 format: which weights are quantized, and the math both ways.

A quantized weight W (M x N, float8_e4m3fn) comes with `W_scale_inv` (float32, ceil(M/128) x ceil(N/128)),
one scale per 128x128 block: W_real[i, j] = float32(W[i, j]) * scale_inv[i // 128, j // 128].
"""

from __future__ import annotations

import math

import torch

FP8_BLOCK = 128
FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALE_SUFFIX = "_scale_inv"
QUANTIZATION_CONFIG = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [FP8_BLOCK, FP8_BLOCK],
}
# The linear layers DeepSeek ships in FP8: MLA projections and every MLP (dense, routed and shared experts).
QUANTIZED_LINEARS = frozenset(
    {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)


def is_quantized_weight(name: str, shape: tuple[int, ...] | torch.Size) -> bool:
    """DeepSeek's rule: the 2-D weights of the attention and MLP linears (not embeddings, lm_head, norms, router)."""
    parts = name.split(".")
    return len(shape) == 2 and len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in QUANTIZED_LINEARS


def scale_grid(shape: tuple[int, ...] | torch.Size, block: int = FP8_BLOCK) -> tuple[int, int]:
    return math.ceil(shape[0] / block), math.ceil(shape[1] / block)


def quantize_fp8_blockwise(weight: torch.Tensor, block: int = FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek's weight quantization: per block, scale_inv = amax / 448 and fp8 = weight / scale_inv."""
    rows, cols = weight.shape
    grid_rows, grid_cols = scale_grid(weight.shape, block)
    padded = torch.zeros(grid_rows * block, grid_cols * block, dtype=torch.float32)
    padded[:rows, :cols] = weight.float()
    blocks = padded.view(grid_rows, block, grid_cols, block)
    amax = blocks.abs().amax(dim=(1, 3))
    scale_inv = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))  # an all-zero block keeps scale 1
    quantized = (blocks / scale_inv[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return quantized.view(grid_rows * block, grid_cols * block)[:rows, :cols].contiguous(), scale_inv.contiguous()


FP8_NAN_BITS = (0x7F, 0xFF)  # e4m3fn has no infinity; S.1111.111 is NaN


def random_fp8(shape: tuple[int, int], generator: torch.Generator, nan: bool = False) -> torch.Tensor:
    """Uniform over the e4m3fn bit patterns (subnormals, +-0 and +-448 included), NaN only when asked: the awkward
    inputs a kernel is checked on."""
    bits = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    if not nan:
        bits[(bits == FP8_NAN_BITS[0]) | (bits == FP8_NAN_BITS[1])] = 0x7E  # 448
    return bits.view(torch.float8_e4m3fn)


def random_scale(weight_shape: tuple[int, int], generator: torch.Generator, block: int = FP8_BLOCK) -> torch.Tensor:
    """Positive float32 scales over many binades (2**-24 .. 2**8), as real amax/448 scales spread."""
    grid = scale_grid(weight_shape, block)
    exponents = torch.randint(-24, 9, grid, generator=generator).float()
    return (torch.rand(grid, generator=generator) + 0.5) * torch.pow(2.0, exponents)


def dequantize_fp8_torch(
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: int = FP8_BLOCK,
    *,
    out: torch.Tensor | None = None,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """bf16(float32(w) * scale_inv[i // block, j // block]): the Triton kernel's math, on any torch device.

    `weight` may be a slice of whole row blocks (its scale rows sliced alike). The scale is broadcast per
    block row, never expanded to the weight's size. `out` (bf16) and `scratch` (flat float32, at least
    w.numel() long) let a caller reuse buffers across slices: the work is then done in place, in cache.
    """
    rows, cols = weight.shape
    if tuple(scale_inv.shape) != scale_grid(weight.shape, block):
        raise ValueError(
            f"scale grid {tuple(scale_inv.shape)} does not match weight {tuple(weight.shape)} in {block}x{block} blocks"
        )
    col_scale = scale_inv.to(torch.float32).repeat_interleave(block, dim=1)[:, :cols]  # (row blocks, cols)
    work = weight.to(torch.float32) if scratch is None else scratch[: rows * cols].view(rows, cols).copy_(weight)
    full_rows = rows - rows % block
    if full_rows:
        work[:full_rows].view(full_rows // block, block, cols).mul_(col_scale[: full_rows // block, None, :])
    if full_rows < rows:
        work[full_rows:].mul_(col_scale[-1])
    if out is None:
        out = torch.empty(rows, cols, dtype=torch.bfloat16, device=weight.device)
    return out.copy_(work)  # float32 -> bf16 rounds to nearest even, as the kernel's store does
