"""FP8 -> BF16 block dequantization as a Triton kernel, in the style of DeepSeek's `weight_dequant`.

One program per 128x128 block: load the FP8 block, widen to float32, multiply by the block's scale, store
as bf16. Exactly `dequantize_fp8_torch`'s math, so the CPU path can be bit-identical. Imported only on
the CUDA path: `triton` comes with the `gpu` extra.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sftc_assets.checkpoints.fp8 import FP8_BLOCK, dequantize_fp8_torch, scale_grid


@triton.jit
def _weight_dequant_kernel(x_ptr, s_ptr, y_ptr, M, N, BLOCK: tl.constexpr):
    pid_m = tl.program_id(axis=0)
    pid_n = tl.program_id(axis=1)
    blocks_per_row = tl.cdiv(N, BLOCK)
    offs_m = pid_m * BLOCK + tl.arange(0, BLOCK)
    offs_n = pid_n * BLOCK + tl.arange(0, BLOCK)
    offs = offs_m[:, None].to(tl.int64) * N + offs_n[None, :]  # int64: M*N can pass 2**31 on the embeddings' scale
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    s = tl.load(s_ptr + pid_m * blocks_per_row + pid_n)
    tl.store(y_ptr + offs, (x * s).to(tl.bfloat16), mask=mask)


def weight_dequant(x: torch.Tensor, s: torch.Tensor, block: int = FP8_BLOCK) -> torch.Tensor:
    """bf16(float32(x) * s[i // block, j // block]) for a 2-D FP8 CUDA tensor `x` and its float32 scale grid `s`."""
    if x.dim() != 2 or tuple(s.shape) != scale_grid(x.shape, block):
        raise ValueError(
            f"scale grid {tuple(s.shape)} does not match weight {tuple(x.shape)} in {block}x{block} blocks"
        )
    x, s = x.contiguous(), s.to(torch.float32).contiguous()
    M, N = x.shape
    y = torch.empty((M, N), dtype=torch.bfloat16, device=x.device)
    grid = (triton.cdiv(M, block), triton.cdiv(N, block))
    _weight_dequant_kernel[grid](x, s, y, M, N, BLOCK=block)
    return y


def triton_fp8_supported(device: int | str | torch.device = 0) -> tuple[bool, str]:
    """Probe, not assume: run the kernel on awkward shapes and compare bit for bit with the torch math.

    Older Triton refuses FP8 loads below compute capability 9.0; any failure says why and the caller falls
    back to the torch path on the GPU.
    """
    try:
        generator = torch.Generator(device="cpu").manual_seed(0)
        weight = (torch.randn(257, 130, generator=generator) * 64).to(torch.float8_e4m3fn).to(device)
        scale = torch.rand(scale_grid(weight.shape), generator=generator).to(device)
        got = weight_dequant(weight, scale)
        torch.cuda.synchronize(device)
        expected = dequantize_fp8_torch(weight, scale)
    except Exception as exc:  # compile and launch errors differ across Triton versions; all mean "not here"
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return False, f"Triton FP8 kernel failed on {device}: {type(exc).__name__}: {first_line}"
    if not torch.equal(got.view(torch.int16), expected.view(torch.int16)):
        return False, f"Triton FP8 kernel on {device} differs from the torch math; using torch"
    return True, f"Triton {triton.__version__} FP8 kernel verified on {device}"
