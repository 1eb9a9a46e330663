"""Atomic writes: a file or a directory appears under its final name only when complete."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

# Called with (what was built, the final path) just before the swap: sftc_core.artifacts.Stamp writes the
# artifact's marker there, so the artifact and its marker appear together; what it returns, if anything,
# takes the marker back when the swap fails.
BeforeSwap = Callable[[Path, Path], "Callable[[], None] | None"]

# The process umask (read by setting it), so atomic files get the mode a plain open() would give.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path | str, stamp: BeforeSwap | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(
            tmp_path, 0o666 & ~_UMASK
        )  # mkstemp makes 0600, and writers may have replaced the file: the usual mode
        undo = stamp(tmp_path, path) if stamp is not None else None
        try:
            os.replace(tmp_path, path)
        except OSError:
            if undo is not None:
                undo()
            raise
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(path: Path | str, data: bytes, stamp: BeforeSwap | None = None) -> Path:
    with atomic_path(path, stamp) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: Path | str, text: str, stamp: BeforeSwap | None = None) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), stamp)


def atomic_write_json(path: Path | str, obj: object, stamp: BeforeSwap | None = None) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", stamp)


def atomic_write_csv(path: Path | str, rows: Iterable[dict], columns: Iterable[str]) -> Path:
    """A CSV with a header of `columns`; keys of a row outside them are left out, missing ones are empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def atomic_write_jsonl(path: Path | str, rows: Iterable[dict]) -> int:
    """Write one JSON object a line (keys in insertion order, UTF-8 kept); returns the number of lines."""
    count = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
            fh.flush()
            os.fsync(fh.fileno())
    return count


@contextlib.contextmanager
def atomic_dir(path: Path | str, stamp: BeforeSwap | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes 0700
    try:
        yield tmp
        normalise_modes(tmp)
        if stamp is not None:
            stamp(tmp, path)
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def normalise_modes(root: Path | str) -> None:
    """Give every file under `root` the mode a plain open() would (some writers use mkstemp's 0600)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o666 & ~_UMASK)


def replace_dir(src: Path | str, path: Path | str) -> None:
    """Move the finished directory `src` (same filesystem) to `path`, replacing whatever was there."""
    src, path = Path(src), Path(path)
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(src, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, path)


def iter_jsonl(path: Path | str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line;
    a line that is not a JSON object is an error naming file and line."""
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg}); each line must be one JSON object"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def read_jsonl(path: Path | str) -> list[dict]:
    """Read a JSONL file; a line that is not a JSON object is an error naming file and line."""
    return [row for _, row in iter_jsonl(path)]
