"""The Triton kernel against the torch math, bit for bit (needs CUDA and the `gpu` extra: skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch
from checkpoints_helpers import awkward_checkpoint, random_fp8, random_scale

from sftc_assets.checkpoints.convert import convert_fp8_checkpoint
from sftc_assets.checkpoints.fp8 import dequantize_fp8_torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def kernel():
    pytest.importorskip("triton")
    from sftc_assets.checkpoints import kernel

    supported, reason = kernel.triton_fp8_supported("cuda")
    if not supported:
        pytest.skip(reason)
    return kernel


@pytest.mark.parametrize("shape", [(1, 1), (129, 127), (128, 128), (1000, 700), (7168 // 4, 2048)])
def test_triton_kernel_is_bit_identical_to_the_torch_math(kernel, shape):
    g = torch.Generator().manual_seed(sum(shape))
    weight = random_fp8(shape, g)
    scale = random_scale(shape, g)
    got = kernel.weight_dequant(weight.cuda(), scale.cuda()).cpu()
    expected = dequantize_fp8_torch(weight, scale)
    assert torch.equal(got.view(torch.int16), expected.view(torch.int16))
    on_gpu = dequantize_fp8_torch(weight.cuda(), scale.cuda()).cpu()  # the fallback path on the GPU, too
    assert torch.equal(on_gpu.view(torch.int16), expected.view(torch.int16))


def test_cuda_conversion_writes_the_same_bytes_as_the_cpu(kernel, tmp_path):
    source = awkward_checkpoint(tmp_path / "fp8")
    cuda = convert_fp8_checkpoint(source, tmp_path / "cuda", device="cuda", progress=False)
    convert_fp8_checkpoint(source, tmp_path / "cpu", device="cpu", progress=False)
    assert cuda["device"] == "cuda" and cuda["method"] == "triton"
    for path in (tmp_path / "cpu").iterdir():
        assert (tmp_path / "cuda" / path.name).read_bytes() == path.read_bytes(), path.name
