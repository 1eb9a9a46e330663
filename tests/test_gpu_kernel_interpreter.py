"""The Triton kernel's block indexing, masks and scale lookup, run by Triton's CPU interpreter (no GPU needed).

`make test` installs triton (the `gpu` extra) where its wheel exists, so this runs on every CPU run; it skips where
triton is not installed. The interpreter downcasts float32 -> bf16 by
truncation where the GPU rounds to nearest even, so this proves which scale every element gets, not the
rounding: the bit-exact rounding is tests/test_gpu_kernel.py's job on a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton not installed (pip install -e '.[gpu]')"
)

SCRIPT = """
import torch
from checkpoints_helpers import random_fp8, random_scale
from sftc_assets.checkpoints import kernel
from sftc_assets.checkpoints.fp8 import dequantize_fp8_torch

for shape in [(1, 1), (129, 127), (128, 128), (300, 257), (257, 513)]:
    g = torch.Generator().manual_seed(sum(shape))
    weight, scale = random_fp8(shape, g), random_scale(shape, g)
    got = kernel.weight_dequant(weight, scale).view(torch.int16)
    cols = scale.repeat_interleave(128, 0)[: shape[0]].repeat_interleave(128, 1)[:, : shape[1]]
    truncated = ((weight.float() * cols).view(torch.int32) >> 16).to(torch.int16)
    nearest_even = dequantize_fp8_torch(weight, scale).view(torch.int16)
    assert torch.equal(got, truncated) or torch.equal(got, nearest_even), shape
print("ok")
"""


def test_kernel_indexing_under_the_triton_interpreter(tmp_path):
    tests_dir = Path(__file__).resolve().parent
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tests_dir), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
