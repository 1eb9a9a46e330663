"""FP8 -> BF16 conversion: exactness against an independent reference, layout of the output, resume, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints_helpers import (
    awkward_checkpoint,
    random_fp8,
    random_scale,
    reference_dequant_bits,
    write_checkpoint,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sftc_assets.checkpoints import convert
from sftc_assets.checkpoints.convert import (
    DELAY_ENV,
    STATE_NAME,
    convert_fp8_checkpoint,
    staging_dir,
)
from sftc_assets.checkpoints.fp8 import dequantize_fp8_torch, quantize_fp8_blockwise
from sftc_assets.checkpoints.safetensors_io import CheckpointError
from sftc_core.artifacts import integrity_problems, is_marker, is_ours
from sftc_jobs.cli import main as sftc_main

REPO = Path(__file__).resolve().parent.parent


def _tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(checkpoint.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def _bits(tensor: torch.Tensor) -> np.ndarray:
    return tensor.contiguous().view(torch.int16).numpy().view(np.uint16)


def _assert_matches_reference(got: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> None:
    assert got.dtype == torch.bfloat16 and tuple(got.shape) == tuple(weight.shape)
    expected = reference_dequant_bits(weight, scale)
    got_bits = _bits(got)
    nan = np.isnan(got.float().numpy())
    np.testing.assert_array_equal(nan, expected == 0x7FC0)
    np.testing.assert_array_equal(got_bits[~nan], expected[~nan])


@pytest.fixture(scope="module")
def awkward(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("awkward")
    source = awkward_checkpoint(root / "fp8")
    summary = convert_fp8_checkpoint(source, root / "bf16", device="cpu", progress=False)
    return source, root / "bf16", summary


def test_awkward_shapes_match_the_independent_reference_bit_for_bit(awkward):
    source, output, _ = awkward
    src, out = _tensors(source), _tensors(output)
    fp8_names = [n for n, t in src.items() if t.dtype == torch.float8_e4m3fn]
    assert len(fp8_names) == 6
    for name in fp8_names:
        _assert_matches_reference(out[name], src[name], src[name + "_scale_inv"])


def test_unquantized_tensors_pass_through_with_their_dtype_and_bytes(awkward):
    source, output, _ = awkward
    src, out = _tensors(source), _tensors(output)
    kept = [n for n, t in src.items() if t.dtype != torch.float8_e4m3fn and not n.endswith("_scale_inv")]
    assert {src[n].dtype for n in kept} >= {
        torch.bfloat16,
        torch.float16,
        torch.float32,
        torch.int64,
        torch.bool,
        torch.float64,
    }
    for name in kept:
        assert out[name].dtype == src[name].dtype and out[name].shape == src[name].shape
        assert (
            torch.equal(out[name].view(torch.uint8), src[name].view(torch.uint8))
            if out[name].dim()
            else out[name] == src[name]
        )


def test_index_config_and_side_files_are_rewritten_and_copied(awkward):
    source, output, summary = awkward
    index = json.loads((output / "model.safetensors.index.json").read_text())
    out = _tensors(output)
    assert not any(n.endswith("_scale_inv") for n in index["weight_map"])
    assert set(index["weight_map"]) == set(out)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in out.values())
    for name, shard in index["weight_map"].items():  # each tensor really is in the shard the index names
        with safe_open(output / shard, "pt") as fh:
            assert name in fh.keys()
    # the scales-only shard has nothing left to write
    assert sorted(p.name for p in output.glob("*.safetensors")) == sorted(set(index["weight_map"].values()))
    assert summary["shards"] == 3 and summary["dequantized_tensors"] == 6
    config = json.loads((output / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "test"
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "modeling_deepseek.py",
        "README.md",
    ):
        assert (output / name).read_bytes() == (source / name).read_bytes()
    assert not (output / ".cache_marker").exists() and not (output / STATE_NAME).exists()
    assert not staging_dir(output).exists()


def test_torch_math_is_the_reference_on_random_blocks_with_nan_and_overflow():
    g = torch.Generator().manual_seed(3)
    weight = random_fp8((385, 259), g, nan=True)
    scale = random_scale(weight.shape, g)
    scale[0, 0] = 3.0e38  # products overflow float32 -> inf in bf16, as on the GPU
    _assert_matches_reference(dequantize_fp8_torch(weight, scale), weight, scale)


def test_row_slices_of_whole_blocks_give_the_same_bits_as_the_whole_tensor(monkeypatch):
    g = torch.Generator().manual_seed(4)
    weight = random_fp8((700, 300), g)
    scale = random_scale(weight.shape, g)
    monkeypatch.setattr(convert, "CPU_CHUNK_ELEMENTS", 128 * 300)  # one block row per slice: 6 slices
    sliced = torch.cat(
        [piece.clone() for piece in convert._dequantize_cpu(weight, scale)]
    )  # each slice reuses one buffer
    assert torch.equal(_bits_t(sliced), _bits_t(dequantize_fp8_torch(weight, scale)))


def _bits_t(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.int16)


def test_quantize_then_convert_recovers_weights_within_fp8_precision(tmp_path):
    g = torch.Generator().manual_seed(5)
    weight = torch.randn(200, 140, generator=g) * 0.02
    weight[:128, :128] = 0  # an all-zero block keeps scale 1 and stays exactly zero
    q, s = quantize_fp8_blockwise(weight)
    assert s.shape == (2, 2) and s[0, 0] == 1.0
    write_checkpoint(
        tmp_path / "fp8", [{"model.layers.0.mlp.up_proj.weight": q, "model.layers.0.mlp.up_proj.weight_scale_inv": s}]
    )
    convert_fp8_checkpoint(tmp_path / "fp8", tmp_path / "bf16", device="cpu", progress=False)
    back = _tensors(tmp_path / "bf16")["model.layers.0.mlp.up_proj.weight"].float()
    assert torch.all(back[:128, :128] == 0)
    rel = ((back - weight).abs() / weight.abs().clamp_min(1e-3)).max()
    assert rel < 0.07  # e4m3 keeps 3 mantissa bits: <= 1/16 relative error, plus bf16 rounding


def test_rerun_replaces_a_complete_output_with_identical_bytes(awkward, tmp_path):
    source, first, _ = awkward
    output = tmp_path / "bf16"
    convert_fp8_checkpoint(source, output, device="cpu", progress=False)
    (output / "stale.txt").write_text("from an older run")
    convert_fp8_checkpoint(source, output, device="cpu", progress=False)
    assert not (output / "stale.txt").exists()
    assert sorted(p.name for p in output.iterdir()) == sorted(p.name for p in first.iterdir())
    for path in first.iterdir():
        assert (output / path.name).read_bytes() == path.read_bytes()


def test_a_failed_run_resumes_from_its_finished_shards_and_ends_identical(awkward, tmp_path, monkeypatch):
    source, reference, _ = awkward
    output = tmp_path / "bf16"
    real = convert._convert_shard
    calls = []

    def dies_on_the_second_shard(shard, *args):
        calls.append(shard.filename)
        if len(calls) == 2:
            raise OSError("disk went away")
        return real(shard, *args)

    monkeypatch.setattr(convert, "_convert_shard", dies_on_the_second_shard)
    with pytest.raises(OSError):
        convert_fp8_checkpoint(source, output, device="cpu", progress=False)
    assert not output.exists()
    staged = staging_dir(output)
    assert (staged / calls[0]).is_file() and list(json.loads((staged / STATE_NAME).read_text())["done"]) == [calls[0]]
    monkeypatch.setattr(convert, "_convert_shard", real)

    summary = convert_fp8_checkpoint(source, output, device="cpu", progress=False)
    assert summary["shards_resumed"] == 1 and summary["shards_converted"] == summary["shards"] - 1
    for path in reference.iterdir():
        assert (output / path.name).read_bytes() == path.read_bytes()


def test_a_changed_source_invalidates_the_half_done_run(tmp_path, monkeypatch):
    source = awkward_checkpoint(tmp_path / "fp8")
    output = tmp_path / "bf16"
    monkeypatch.setattr(convert, "_convert_shard", _fail_after(convert._convert_shard, 1))
    with pytest.raises(OSError):
        convert_fp8_checkpoint(source, output, device="cpu", progress=False)
    monkeypatch.undo()
    first_shard = sorted(source.glob("*.safetensors"))[0]
    os.utime(first_shard, ns=(0, 0))  # the same name, another file as far as the fingerprint can tell
    summary = convert_fp8_checkpoint(source, output, device="cpu", progress=False)
    assert summary["shards_resumed"] == 0


def _fail_after(real, successes: int):
    done = []

    def wrapped(shard, *args):
        if len(done) == successes:
            raise OSError("interrupted")
        done.append(shard.filename)
        return real(shard, *args)

    return wrapped


def test_killed_cli_conversion_restarted_ends_byte_identical(tmp_path):
    """A real `sftc convert-fp8` process, slowed down per tensor, SIGKILLed mid-way, then run again."""
    source = awkward_checkpoint(tmp_path / "fp8", seed=1)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    sftc = [
        sys.executable,
        "-m",
        "sftc_jobs.cli",
        "convert-fp8",
        "--source",
        str(source),
        "--device",
        "cpu",
        "--no-progress",
    ]
    env = {**os.environ, DELAY_ENV: "0.3"}
    proc = subprocess.Popen(
        [*sftc, "--output", str(killed)], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    state = staging_dir(killed) / STATE_NAME
    deadline = time.monotonic() + 60
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the conversion ended before it could be killed"
    time.sleep(0.4)  # into the next shard: a half-written temporary is left behind
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not killed.exists()
    assert any(p.name.endswith(".tmp") for p in staging_dir(killed).iterdir())

    resumed = subprocess.run(
        [*sftc, "--output", str(killed)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["shards_resumed"] >= 1
    convert_fp8_checkpoint(source, clean, device="cpu", progress=False)
    assert is_ours(killed) and not integrity_problems(killed)  # the command marked what it wrote
    assert sorted(p.name for p in killed.iterdir() if not is_marker(p)) == sorted(p.name for p in clean.iterdir())
    for path in clean.iterdir():
        assert (killed / path.name).read_bytes() == path.read_bytes(), path.name


# --- bad input: a clear error naming tensor and shard, nothing written ----------------------------------------


def _edit_shard(path: Path, edit) -> None:
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _edit_index(root: Path, edit) -> None:
    path = root / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    edit(index["weight_map"])
    path.write_text(json.dumps(index))


SHARD1 = "model-00001-of-00004.safetensors"
SHARD2 = "model-00002-of-00004.safetensors"
SHARD3 = "model-00003-of-00004.safetensors"
KV_B = "model.layers.0.self_attn.kv_b_proj.weight"
UP = "model.layers.0.mlp.up_proj.weight"


def _missing_scale(root):
    _edit_shard(root / SHARD3, lambda t: t.pop(KV_B + "_scale_inv"))
    _edit_index(root, lambda m: m.pop(KV_B + "_scale_inv"))


def _wrong_grid(root):
    _edit_shard(root / SHARD3, lambda t: t.update({UP + "_scale_inv": torch.ones(2, 2)}))  # 300x257 needs 3x3


def _missing_shard(root):
    (root / SHARD3).unlink()


def _truncated_shard(root):
    data = (root / SHARD2).read_bytes()
    (root / SHARD2).write_bytes(data[: len(data) - 100])


def _tensor_not_in_shard(root):
    _edit_index(root, lambda m: m.update({"model.layers.9.mlp.up_proj.weight": SHARD1}))


def _scale_without_fp8_weight(root):
    _edit_shard(root / SHARD1, lambda t: t.update({KV_B: t[KV_B].float()}))


def _fp8_not_2d(root):
    _edit_shard(root / SHARD1, lambda t: t.update({"model.odd": torch.zeros(2, 2, 2).to(torch.float8_e4m3fn)}))
    _edit_index(root, lambda m: m.update({"model.odd": SHARD1, "model.odd_scale_inv": SHARD1}))
    _edit_shard(root / SHARD1, lambda t: t.update({"model.odd_scale_inv": torch.ones(1, 1)}))


def _bad_config(root):
    (root / "config.json").write_text("{not json")


BAD_INPUTS = {
    "missing scale": (_missing_scale, [KV_B, SHARD1, "_scale_inv"]),
    "scale grid mismatch": (_wrong_grid, [UP + "_scale_inv", SHARD3, "[2, 2]", "[3, 3]", "300, 257"]),
    "index names a missing shard": (_missing_shard, [SHARD3, "missing"]),
    "truncated shard": (_truncated_shard, [SHARD2, "truncated"]),
    "index names a tensor its shard lacks": (_tensor_not_in_shard, ["model.layers.9.mlp.up_proj.weight", SHARD1]),
    "scale of a non-FP8 weight": (_scale_without_fp8_weight, [KV_B + "_scale_inv", "F32, not FP8"]),
    "FP8 tensor not 2-D": (_fp8_not_2d, ["model.odd", SHARD1, "2-D"]),
    "config.json not JSON": (_bad_config, ["config.json", "not valid JSON"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_before_writing_with_an_error_naming_tensor_and_shard(case, tmp_path):
    source = awkward_checkpoint(tmp_path / "fp8")
    damage, expected = BAD_INPUTS[case]
    damage(source)
    output = tmp_path / "out" / "bf16"
    with pytest.raises(CheckpointError) as info:
        convert_fp8_checkpoint(source, output, device="cpu", progress=False)
    for text in expected:
        assert text in str(info.value), (text, str(info.value))
    assert not (tmp_path / "out").exists()  # not even the staging directory


def test_a_non_fp8_source_is_refused(tmp_path):
    write_checkpoint(
        tmp_path / "bf16src", [{"model.layers.0.mlp.up_proj.weight": torch.ones(4, 4, dtype=torch.bfloat16)}]
    )
    with pytest.raises(CheckpointError, match="not an FP8 checkpoint"):
        convert_fp8_checkpoint(tmp_path / "bf16src", tmp_path / "out", device="cpu", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_failed_conversion_leaves_an_earlier_output_untouched(awkward, tmp_path):
    source, reference, _ = awkward
    output = tmp_path / "bf16"
    shutil.copytree(reference, output)
    broken = awkward_checkpoint(tmp_path / "broken")
    _missing_shard(broken)
    with pytest.raises(CheckpointError):
        convert_fp8_checkpoint(broken, output, device="cpu", progress=False)
    for path in reference.iterdir():
        assert (output / path.name).read_bytes() == path.read_bytes()


def test_cuda_requested_without_cuda_is_a_clear_error(awkward, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this node has CUDA")
    with pytest.raises(ValueError, match="no CUDA device"):
        convert_fp8_checkpoint(awkward[0], tmp_path / "out", device="cuda", progress=False)


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = awkward_checkpoint(tmp_path / "fp8")
    _missing_scale(source)
    assert sftc_main(["convert-fp8", "--source", str(source), "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    assert KV_B in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
