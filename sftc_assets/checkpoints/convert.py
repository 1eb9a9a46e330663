"""FP8 -> BF16 conversion of a DeepSeek-V3 Hugging Face checkpoint: streamed, exact, atomic and resumable.

The whole checkpoint is planned and validated from the safetensors headers first (a bad input fails before
anything is written). Then each shard is converted tensor by tensor into a hidden staging directory beside
the output: written to a temporary name, verified, renamed, and recorded in a state file, so a killed run
started again skips the finished shards and ends with the same bytes. When every shard is done the index,
config (without `quantization_config`) and the other files are added and the staging directory replaces
the output in one rename.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import torch

from sftc_assets.checkpoints.fp8 import (
    FP8_BLOCK,
    SCALE_SUFFIX,
    dequantize_fp8_torch,
    scale_grid,
)
from sftc_assets.checkpoints.safetensors_io import (
    INDEX_NAME,
    SAFETENSORS_METADATA,
    CheckpointError,
    HashingWriter,
    TensorInfo,
    TensorSpec,
    encode_header,
    iter_tensor_bytes,
    read_checkpoint_headers,
    read_header,
    read_tensor,
    tensor_bytes,
)
from sftc_core.io import BeforeSwap, atomic_write_json, normalise_modes, replace_dir
from sftc_core.progress import BYTES, Tracker
from sftc_core.threads import torch_threads

logger = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
CONVERT_FORMAT = 1  # bump when the same input would give other output bytes: half-done runs then start over
STATE_NAME = ".sftc-convert-state.json"
CONFIG_NAME = "config.json"
# Seconds to sleep after each tensor: lets tests and demos interrupt a conversion of a tiny checkpoint.
DELAY_ENV = "SFTC_CONVERT_TENSOR_DELAY_S"
CPU_CHUNK_ELEMENTS = 1 << 20  # per dequantized slice on CPU: 4 MiB of float32 scratch, cache-sized, whatever the weight
FP8_NAMES = ("F8_E4M3", "F8_E5M2")
SCALE_DTYPES = ("F32", "BF16", "F16")  # widened to float32 exactly


@dataclass(frozen=True)
class PlannedTensor:
    output: TensorSpec
    source: TensorInfo
    source_path: Path
    scale: TensorInfo | None = None
    scale_path: Path | None = None

    @property
    def input_bytes(self) -> int:
        return self.source.nbytes + (self.scale.nbytes if self.scale else 0)


@dataclass(frozen=True)
class PlannedShard:
    filename: str
    tensors: tuple[PlannedTensor, ...]

    @property
    def header(self) -> bytes:
        return encode_header([t.output for t in self.tensors], SAFETENSORS_METADATA)

    @property
    def output_bytes(self) -> int:
        return len(self.header) + sum(t.output.nbytes for t in self.tensors)

    @property
    def input_bytes(self) -> int:
        return sum(t.input_bytes for t in self.tensors)


@dataclass(frozen=True)
class ConversionPlan:
    source: Path
    shards: tuple[PlannedShard, ...]
    fingerprint: dict
    config: dict | None  # config.json, read (and checked) before any work

    @property
    def weight_map(self) -> dict[str, str]:
        return {t.output.name: s.filename for s in self.shards for t in s.tensors}

    @property
    def total_size(self) -> int:
        return sum(t.output.nbytes for s in self.shards for t in s.tensors)

    @property
    def input_bytes(self) -> int:
        return sum(size for size, _ in self.fingerprint["shards"].values())

    @property
    def dequantized(self) -> int:
        return sum(1 for s in self.shards for t in s.tensors if t.scale is not None)


def plan_conversion(source: Path | str) -> ConversionPlan:
    """Read every header and check the FP8 layout; any problem is a CheckpointError naming tensor and shard."""
    source = Path(source)
    weight_map, headers = read_checkpoint_headers(source)
    info = {name: headers[shard].tensors[name] for name, shard in weight_map.items()}
    fp8 = sorted(name for name, tensor in info.items() if tensor.dtype in FP8_NAMES)
    if not fp8:
        raise CheckpointError(
            f"{source}: no FP8 tensor among {len(info)}: not an FP8 checkpoint (already BF16?); nothing to convert"
        )
    for name in sorted(info):
        if name.endswith(SCALE_SUFFIX) and name.removesuffix(SCALE_SUFFIX) not in fp8:
            weight = name.removesuffix(SCALE_SUFFIX)
            what = f"is {info[weight].dtype}, not FP8" if weight in info else "is not in the index"
            raise CheckpointError(f"{source / weight_map[name]}: scale {name} belongs to {weight}, which {what}")
    for name in fp8:
        _check_scale(source, weight_map, info, name)

    shards = []
    for filename in sorted(headers):
        tensors = []
        for name in sorted(n for n, s in weight_map.items() if s == filename and not n.endswith(SCALE_SUFFIX)):
            src = info[name]
            if name in fp8:
                scale_name = name + SCALE_SUFFIX
                tensors.append(
                    PlannedTensor(
                        TensorSpec(name, "BF16", src.shape),
                        src,
                        source / filename,
                        info[scale_name],
                        source / weight_map[scale_name],
                    )
                )
            else:
                tensors.append(PlannedTensor(TensorSpec(name, src.dtype, src.shape), src, source / filename))
        if tensors:  # a shard that held only scales has nothing left to write
            shards.append(PlannedShard(filename, tuple(tensors)))
    fingerprint = {
        "format": CONVERT_FORMAT,
        "source": str(source.resolve()),
        "weight_map_sha256": hashlib.sha256(json.dumps(weight_map, sort_keys=True).encode()).hexdigest(),
        "shards": {name: [h.path.stat().st_size, h.path.stat().st_mtime_ns] for name, h in sorted(headers.items())},
    }
    return ConversionPlan(source, tuple(shards), fingerprint, _read_config(source))


def _read_config(source: Path) -> dict | None:
    path = source / CONFIG_NAME
    if not path.is_file():
        logger.warning("%s: no config.json in the source; the output will lack one too", source)
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); fix or restore the model's config.json") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config


def _check_scale(source: Path, weight_map: dict[str, str], info: dict[str, TensorInfo], name: str) -> None:
    weight, shard = info[name], source / weight_map[name]
    scale_name = name + SCALE_SUFFIX
    if len(weight.shape) != 2:
        raise CheckpointError(f"{shard}: FP8 tensor {name} has shape {list(weight.shape)}; block FP8 weights are 2-D")
    if scale_name not in info:
        raise CheckpointError(
            f"{shard}: FP8 tensor {name} has no {scale_name} in the index: the checkpoint is incomplete "
            "(download the missing shard or index again) or not in DeepSeek's block-FP8 layout"
        )
    scale, scale_shard = info[scale_name], source / weight_map[scale_name]
    expected = scale_grid(weight.shape, FP8_BLOCK)
    if scale.shape != expected:
        raise CheckpointError(
            f"{scale_shard}: scale {scale_name} has shape {list(scale.shape)}, but weight {name} {list(weight.shape)} "
            f"(in {shard.name}) needs ceil(M/{FP8_BLOCK}) x ceil(N/{FP8_BLOCK}) = {list(expected)}"
        )
    if scale.dtype not in SCALE_DTYPES:
        raise CheckpointError(
            f"{scale_shard}: scale {scale_name} has dtype {scale.dtype}; expected one of {', '.join(SCALE_DTYPES)}"
        )


Dequantize = Callable[[torch.Tensor, torch.Tensor], Iterator[torch.Tensor]]


def select_dequantizer(device: Device) -> tuple[str, str, Dequantize]:
    """(device, method, function yielding bf16 CPU slices in row order) for `device`.

    On CUDA the Triton kernel is used where it is probed to work, else the same math in torch on the GPU.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={device!r}: expected auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but torch sees no CUDA device on this node; use --device cpu or auto")
    if device == "cpu" or not torch.cuda.is_available():
        return "cpu", "torch", _dequantize_cpu
    supported, reason = triton_fp8_check("cuda")
    logger.info("%s", reason)
    if not supported:
        return "cuda", "torch", _on_gpu(dequantize_fp8_torch)
    from sftc_assets.checkpoints.kernel import weight_dequant

    return "cuda", "triton", _on_gpu(weight_dequant)


def triton_fp8_check(device: int | str = 0) -> tuple[bool, str]:
    """Whether the Triton FP8 kernel runs on `device` and matches the torch math bit for bit, and why not."""
    try:
        from sftc_assets.checkpoints.kernel import triton_fp8_supported
    except ImportError as exc:  # triton is the `gpu` extra
        return False, f"triton not importable ({exc}): conversion uses torch on the GPU"
    return triton_fp8_supported(device)


def _dequantize_cpu(weight: torch.Tensor, scale: torch.Tensor) -> Iterator[torch.Tensor]:
    # Slices of whole 128-row blocks through one reused float32 scratch: the work stays in cache and memory
    # flat. Each bf16 slice is its own tensor, as the writer thread may still be hashing the previous one.
    rows_per_slice = max(FP8_BLOCK, CPU_CHUNK_ELEMENTS // max(weight.shape[1], 1) // FP8_BLOCK * FP8_BLOCK)
    scratch = torch.empty(min(rows_per_slice, weight.shape[0]) * weight.shape[1], dtype=torch.float32)
    for start in range(0, weight.shape[0], rows_per_slice):
        stop = min(start + rows_per_slice, weight.shape[0])
        yield dequantize_fp8_torch(
            weight[start:stop], scale[start // FP8_BLOCK : -(-stop // FP8_BLOCK)], scratch=scratch
        )


def _on_gpu(dequantize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Dequantize:
    def run(weight: torch.Tensor, scale: torch.Tensor) -> Iterator[torch.Tensor]:
        yield dequantize(weight.to("cuda", non_blocking=True), scale.to("cuda")).cpu()

    return run


def staging_dir(output: Path) -> Path:
    return output.parent / f".{output.name}.partial"


def convert_fp8_checkpoint(
    source: Path | str,
    output: Path | str,
    *,
    device: Device = "auto",
    progress: bool = True,
    stamp: BeforeSwap | None = None,
    progress_log: Callable[[str], None] | None = None,
) -> dict:
    """Convert the FP8 checkpoint `source` into a BF16 checkpoint at `output` (replaced whole when done).

    Returns a summary: shards (converted / resumed), tensors, bytes, seconds, GB/s, device and method. Progress
    over the bytes: a bar on a command's terminal (unless `progress` is False), a line now and then to `progress_log`.
    """
    source, output = Path(source), Path(output)
    if output.resolve() == source.resolve():
        raise ValueError(f"{output}: the output must be another directory than the source")
    plan = plan_conversion(source)
    device_used, method, dequantize = select_dequantizer(device)
    delay = float(os.environ.get(DELAY_ENV) or 0)

    staging = staging_dir(output)
    done = _resume_state(staging, plan)
    todo = [s for s in plan.shards if s.filename not in done]
    started = time.perf_counter()
    # One core computes while the writer thread writes and hashes: more OpenMP workers would only fight it.
    total = sum(s.input_bytes for s in todo)
    with (
        torch_threads(1 if device_used == "cpu" else None),
        Tracker(f"convert-fp8 {device_used}/{method}", total, BYTES, log=progress_log, bar=progress) as bar,
    ):
        for shard in todo:
            done[shard.filename] = _convert_shard(shard, staging, dequantize, bar, delay)
            atomic_write_json(staging / STATE_NAME, {"fingerprint": plan.fingerprint, "done": done})
    seconds = time.perf_counter() - started

    atomic_write_json(
        staging / INDEX_NAME, {"metadata": {"total_size": plan.total_size}, "weight_map": plan.weight_map}
    )
    _copy_side_files(plan, staging)
    (staging / STATE_NAME).unlink()
    normalise_modes(staging)
    if stamp is not None:
        stamp(staging, output)
    replace_dir(staging, output)

    converted_bytes = sum(s.input_bytes for s in todo)
    summary = {
        "source": str(source),
        "output": str(output),
        "device": device_used,
        "method": method,
        "shards": len(plan.shards),
        "shards_converted": len(todo),
        "shards_resumed": len(plan.shards) - len(todo),
        "tensors": sum(len(s.tensors) for s in plan.shards),
        "dequantized_tensors": plan.dequantized,
        "input_bytes": plan.input_bytes,
        "output_bytes": sum(s.output_bytes for s in plan.shards),
        "seconds": round(seconds, 3),
        "gb_per_s": round(converted_bytes / seconds / 1e9, 3) if todo and seconds > 0 else None,
        "shard_sha256": {name: entry["sha256"] for name, entry in sorted(done.items())},
    }
    logger.info(
        "converted %d shard(s) (%d resumed), %d FP8 tensors dequantized, "
        "%.2f GB -> %.2f GB in %.1f s (%s GB/s) on %s/%s",
        summary["shards_converted"],
        summary["shards_resumed"],
        summary["dequantized_tensors"],
        summary["input_bytes"] / 1e9,
        summary["output_bytes"] / 1e9,
        seconds,
        summary["gb_per_s"],
        device_used,
        method,
    )
    return summary


def _resume_state(staging: Path, plan: ConversionPlan) -> dict[str, dict]:
    """Finished shards of an earlier run of the same conversion; anything else in staging is cleared."""
    state_path = staging / STATE_NAME
    done: dict[str, dict] = {}
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            state = {}
        if state.get("fingerprint") == plan.fingerprint:
            by_name = {s.filename: s for s in plan.shards}
            done = {
                name: entry
                for name, entry in state.get("done", {}).items()
                if name in by_name and _is_finished(staging / name, by_name[name], entry)
            }
            logger.info("resuming %s: %d of %d shard(s) already converted", staging, len(done), len(plan.shards))
    if not done:
        shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    keep = set(done) | {STATE_NAME}
    for path in staging.iterdir():
        if path.name not in keep:  # half-written temporaries and shards not recorded as done
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return done


def _is_finished(path: Path, shard: PlannedShard, entry: dict) -> bool:
    # Shards reach their name only after being verified and fsynced; size and header catch anything else.
    try:
        return path.stat().st_size == shard.output_bytes == entry.get("bytes") and _header_matches(path, shard)
    except (OSError, CheckpointError):
        return False


def _header_matches(path: Path, shard: PlannedShard) -> bool:
    written = read_header(path).tensors
    return [TensorSpec(t.name, t.dtype, t.shape) for t in written.values()] == [t.output for t in shard.tensors]


def _convert_shard(shard: PlannedShard, staging: Path, dequantize: Dequantize, bar: Tracker, delay: float) -> dict:
    final = staging / shard.filename
    tmp = staging / f".{shard.filename}.tmp"
    files: dict[Path, BinaryIO] = {}

    def opened(path: Path) -> BinaryIO:
        if path not in files:
            files[path] = open(path, "rb")
        return files[path]

    try:
        with open(tmp, "wb") as fh:
            with HashingWriter(fh) as writer:
                writer.write(shard.header)
                for tensor in shard.tensors:
                    before = writer.written
                    if tensor.scale is None:
                        for chunk in iter_tensor_bytes(opened(tensor.source_path), tensor.source):
                            writer.write(chunk)
                    else:
                        weight = read_tensor(opened(tensor.source_path), tensor.source)
                        scale = read_tensor(opened(tensor.scale_path), tensor.scale)
                        for block in dequantize(weight, scale):
                            writer.write(tensor_bytes(block))
                    if writer.written - before != tensor.output.nbytes:
                        raise CheckpointError(
                            f"{tensor.source_path}: tensor {tensor.output.name} gave {writer.written - before} bytes, "
                            f"expected {tensor.output.nbytes}"
                        )
                    bar.advance(tensor.input_bytes)
                    if delay:
                        time.sleep(delay)
            fh.flush()
            os.fsync(fh.fileno())
        if tmp.stat().st_size != shard.output_bytes or not _header_matches(tmp, shard):
            raise CheckpointError(f"{tmp}: the written shard does not read back as planned; disk full or changing?")
        os.replace(tmp, final)
    finally:
        for fh in files.values():
            fh.close()
        tmp.unlink(missing_ok=True)
    return {"sha256": writer.sha256.hexdigest(), "bytes": shard.output_bytes}


def _copy_side_files(plan: ConversionPlan, staging: Path) -> None:
    """config.json without quantization_config; tokenizer, generation config, *.py, licences as they are."""
    if plan.config is not None:
        config = {k: v for k, v in plan.config.items() if k != "quantization_config"}
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for path in sorted(plan.source.iterdir()):
        if (
            path.is_file()
            and not path.name.startswith(".")
            and path.suffix != ".safetensors"
            and path.name not in (INDEX_NAME, CONFIG_NAME)
        ):
            shutil.copyfile(path, staging / path.name)
