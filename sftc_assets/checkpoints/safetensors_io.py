"""Safetensors read by header and written by streaming, and the Hugging Face checkpoint index.

The format is 8 bytes (little-endian header length), a JSON header naming each tensor's dtype, shape and
byte range, then the data. Reading headers alone lets us plan and validate a whole checkpoint before any
work; streaming writes keep memory at one tensor, not one shard.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_FILE_NAME = "model.safetensors"
SAFETENSORS_METADATA = {"format": "pt"}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit

DTYPES: dict[str, torch.dtype] = {
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I8": torch.int8,
    "U8": torch.uint8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint on disk is not what it must be; the message names the file, the tensor and the fix."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # safetensors name, e.g. "BF16"
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class TensorInfo(TensorSpec):
    start: int  # byte offset from the start of the file
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] | None


def read_header(path: Path | str) -> SafetensorsHeader:
    """Parse and validate a safetensors header; a truncated or malformed file is a CheckpointError naming it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise CheckpointError(
                    f"{path}: not a safetensors file ({size} bytes, shorter than the 8-byte header length)"
                )
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise CheckpointError(
                    f"{path}: not a safetensors file or truncated (header length {header_len}, file {size} bytes)"
                )
            raw = fh.read(header_len)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: shard file not found") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    data_start = 8 + header_len
    tensors = {}
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry {entry!r}") from None
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype!r}, not one of {', '.join(DTYPES)}")
        info = TensorInfo(name, dtype, shape, data_start + start, data_start + end)
        if end - start != info.nbytes:
            raise CheckpointError(
                f"{path}: tensor {name!r} spans {end - start} bytes, but {dtype} {list(shape)} needs {info.nbytes}"
            )
        if info.end > size:
            raise CheckpointError(
                f"{path}: truncated: tensor {name!r} ends at byte {info.end}, the file has {size}; "
                "download the shard again"
            )
        tensors[name] = info
    return SafetensorsHeader(path, tensors, metadata)


def read_tensor(fh: BinaryIO, info: TensorInfo) -> torch.Tensor:
    """The tensor's bytes read straight into a CPU tensor (no mmap: memory is exactly what we hold)."""
    buffer = bytearray(info.nbytes)
    fh.seek(info.start)
    if fh.readinto(buffer) != info.nbytes:
        raise CheckpointError(f"{fh.name}: short read of tensor {info.name!r}; the file changed or is truncated")
    if not buffer:
        return torch.empty(info.shape, dtype=DTYPES[info.dtype])
    return torch.frombuffer(buffer, dtype=torch.uint8).view(DTYPES[info.dtype]).view(info.shape)


def iter_tensor_bytes(fh: BinaryIO, info: TensorInfo, chunk_bytes: int = 8 << 20) -> Iterable[bytes]:
    """A tensor's raw bytes in chunks: tensors that pass through unchanged are never decoded."""
    fh.seek(info.start)
    remaining = info.nbytes
    while remaining:
        chunk = fh.read(min(chunk_bytes, remaining))
        if not chunk:
            raise CheckpointError(f"{fh.name}: short read of tensor {info.name!r}; the file changed or is truncated")
        remaining -= len(chunk)
        yield chunk


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A contiguous CPU tensor's bytes without a copy (bf16 and fp8 have no numpy dtype, uint8 has)."""
    return memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def encode_header(specs: list[TensorSpec], metadata: dict[str, str] | None = None) -> bytes:
    """Header for tensors stored contiguously in the given order, padded to 8 bytes like the library does."""
    entries: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for spec in specs:
        entries[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class HashingWriter:
    """Writes, SHA-256 and durability in a background thread, so the caller's compute overlaps all three
    (hashlib, file writes and fdatasync release the GIL). Every `sync_every` bytes the thread flushes to
    disk, so the final fsync waits for the tail only, not for the whole shard. Data handed to `write` must
    not change afterwards. Use as a context manager: leaving it waits for every byte, and re-raises a write
    error."""

    def __init__(self, fh: BinaryIO, depth: int = 8, sync_every: int = 16 << 20):
        self.fh = fh
        self.sha256 = hashlib.sha256()
        self.written = 0
        self._queue: queue.Queue = queue.Queue(maxsize=depth)  # bounds the bytes in flight
        self._sync_every = sync_every
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="sftc-shard-writer", daemon=True)
        self._thread.start()

    def write(self, data: bytes | memoryview) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)
        self.written += len(data)

    def _drain(self) -> None:
        unsynced = 0
        while (data := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self.fh.write(data)
                    self.sha256.update(data)
                    unsynced += len(data)
                    if unsynced >= self._sync_every:
                        self.fh.flush()
                        os.fdatasync(self.fh.fileno())
                        unsynced = 0
                except BaseException as exc:  # handed to the producer on its next write or at exit
                    self._error = exc

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc_info[0] is None:
            raise self._error


def file_sha256(path: Path | str, chunk_bytes: int = 16 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def load_weight_map(checkpoint: Path | str) -> dict[str, str]:
    """tensor name -> shard file name, from `model.safetensors.index.json` or a single `model.safetensors`."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise CheckpointError(f"{checkpoint}: checkpoint directory not found")
    index_path = checkpoint / INDEX_NAME
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            weight_map = index["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{index_path}: not a safetensors index (needs a 'weight_map' object): {exc}"
            ) from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index_path}: 'weight_map' must map tensor names to shard file names")
        return dict(weight_map)
    single = checkpoint / SINGLE_FILE_NAME
    if single.is_file():
        return dict.fromkeys(read_header(single).tensors, SINGLE_FILE_NAME)
    raise CheckpointError(
        f"{checkpoint}: no {INDEX_NAME} and no {SINGLE_FILE_NAME}: not a Hugging Face safetensors checkpoint"
    )


def read_checkpoint_headers(checkpoint: Path | str) -> tuple[dict[str, str], dict[str, SafetensorsHeader]]:
    """The weight map and every shard's header, checked against each other (a shard or tensor the index names
    but the files lack is a CheckpointError naming both)."""
    checkpoint = Path(checkpoint)
    weight_map = load_weight_map(checkpoint)
    headers: dict[str, SafetensorsHeader] = {}
    for shard in sorted(set(weight_map.values())):
        path = checkpoint / shard
        if not path.is_file():
            named = sorted(n for n, s in weight_map.items() if s == shard)
            raise CheckpointError(
                f"{checkpoint / INDEX_NAME}: names shard {shard} for {len(named)} tensor(s) (e.g. {named[0]}), "
                "but the file is missing; download it again"
            )
        headers[shard] = read_header(path)
    for name, shard in weight_map.items():
        if name not in headers[shard].tensors:
            raise CheckpointError(
                f"{checkpoint / INDEX_NAME}: maps tensor {name} to {shard}, which does not contain it"
            )
    return weight_map, headers
