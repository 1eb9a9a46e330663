"""What sftc wrote, and only that: every artifact carries a marker, so nothing else is ever replaced, and a file
changed or lost outside the chain is noticed.

A directory artifact holds `.sftc-artifact.json`; a file artifact has a hidden sidecar `.<name>.sftc.json`
beside it. The marker names what wrote the artifact, the config hash of the settings it was made with, and
each file's size, mtime and SHA-256 (files over HASH_WHOLE_BYTES are hashed by their size and first and last
MiB: a checkpoint shard is not read whole again to be recognised). A `Stamp` handed to the atomic writers
(sftc_core.io) writes the marker just before the swap, so an artifact never appears without it.

`guard_output` refuses an output that is, contains or lies inside an input, and one that would replace
something without a marker (`--force` for that). `integrity_problems` says whether an artifact is still
what its marker describes, cheaply: a file whose size and mtime are unchanged is not hashed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sftc_core import locks
from sftc_core.io import atomic_write_json

DIR_MARKER = ".sftc-artifact.json"
FILE_MARKER_SUFFIX = ".sftc.json"
MARKER_FORMAT = 1
HASH_WHOLE_BYTES = 64 << 20
_SAMPLE_BYTES = 1 << 20


class OutputError(ValueError):
    """An output would hurt something: an input, or a file or directory sftc did not write."""


def dir_marker(directory: Path) -> Path:
    return Path(directory) / DIR_MARKER


def file_marker(file: Path) -> Path:
    file = Path(file)
    return file.parent / f".{file.name}{FILE_MARKER_SUFFIX}"


def marker_path(target: Path | str) -> Path:
    """Where the marker of an existing `target` lives (inside a directory, beside a file)."""
    target = Path(target)
    return dir_marker(target) if target.is_dir() else file_marker(target)


def is_marker(path: Path) -> bool:
    return path.name == DIR_MARKER or (path.name.startswith(".") and path.name.endswith(FILE_MARKER_SUFFIX))


def file_digest(path: Path) -> str:
    """SHA-256 of the whole file; above HASH_WHOLE_BYTES, of its size with its first and last MiB."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size <= HASH_WHOLE_BYTES:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
            return digest.hexdigest()
        digest.update(f"sampled:{size}:".encode())
        digest.update(fh.read(_SAMPLE_BYTES))
        fh.seek(size - _SAMPLE_BYTES)
        digest.update(fh.read(_SAMPLE_BYTES))
    return "sampled-" + digest.hexdigest()


def _artifact_files(directory: Path) -> dict[str, Path]:
    """Every file under `directory` (its markers aside), by POSIX path relative to it."""
    return {
        p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file() and not is_marker(p)
    }


@dataclass(frozen=True)
class Marker:
    writer: str  # what wrote it: an asset name, or an `sftc` command
    config_hash: str
    files: dict[str, dict]  # relative path -> size, mtime_ns, sha256

    @property
    def content_hash(self) -> str:
        """One hash of the artifact's content (its files' hashes): the data version of the asset."""
        return hashlib.sha256(json.dumps({k: v["sha256"] for k, v in sorted(self.files.items())}).encode()).hexdigest()[
            :16
        ]

    def as_json(self) -> dict:
        return {
            "format": MARKER_FORMAT,
            "writer": self.writer,
            "config_hash": self.config_hash,
            "content_hash": self.content_hash,
            "files": self.files,
        }


def _entry(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_digest(path)}


@dataclass(frozen=True)
class Stamp:
    """Writes the marker of what was built, just before it is swapped in (see sftc_core.io's `stamp=`); called
    with the finished artifact twice (`stamp(path, path)`), it marks what another process wrote there."""

    writer: str
    config_hash: str

    def __call__(self, built: Path, final: Path) -> Callable[[], None] | None:
        """Write the marker; for a file, return what removes it again should the rename fail."""
        built = Path(built)
        if built.is_dir():
            files = {rel: _entry(path) for rel, path in _artifact_files(built).items()}
            atomic_write_json(dir_marker(built), Marker(self.writer, self.config_hash, files).as_json())
            return None
        # The file keeps its inode (and mtime) through the rename: the entry describes the final file.
        marker = atomic_write_json(
            file_marker(final), Marker(self.writer, self.config_hash, {Path(final).name: _entry(built)}).as_json()
        )
        return lambda: marker.unlink(missing_ok=True)


def read_marker(target: Path | str) -> Marker | None:
    try:
        raw = json.loads(marker_path(target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("format") != MARKER_FORMAT:
        return None
    return Marker(raw["writer"], raw["config_hash"], raw["files"])


def is_ours(target: Path | str) -> bool:
    return read_marker(target) is not None


def _inside(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


FORCE_FIX = "choose a new path, or pass --force to replace it"


def guard_output(
    target: Path | str,
    inputs: Iterable[Path | str | None] = (),
    *,
    force: bool = False,
    option: str = "--output",
    fix: str = FORCE_FIX,
) -> None:
    """Refuse `target` when it is, contains or lies inside an input (paths resolved, symlinks followed), and
    when it exists, is not empty and was not written by sftc (unless `force`); `fix` says what to do then."""
    target = Path(target)
    resolved = target.resolve()
    for source in inputs:
        if source is None:
            continue
        source_resolved = Path(source).resolve()
        if _inside(resolved, source_resolved) or _inside(source_resolved, resolved):
            relation = (
                "is"
                if resolved == source_resolved
                else ("lies inside" if _inside(resolved, source_resolved) else "contains")
            )
            raise OutputError(
                f"{option} {target} {relation} the input {source}: writing it would destroy the input; "
                "choose an output elsewhere"
            )
    if force or not (target.exists() or target.is_symlink()):
        return
    if target.is_dir() and not any(target.iterdir()):
        return
    if not is_ours(target):
        what = "a non-empty directory" if target.is_dir() else "a file"
        raise OutputError(f"{option} {target} is {what} that sftc did not write (no {marker_path(target).name}); {fix}")


@contextlib.contextmanager
def writing(
    targets: Sequence[Path],
    stamp: Stamp,
    *,
    inputs: Iterable[Path | str | None] = (),
    force: bool = False,
    option: str = "--output",
    fix: str = FORCE_FIX,
    check_inputs: Callable[[], None] | None = None,
) -> Iterator[Stamp]:
    """Write `targets` safely: hold their locks for the block (one writer at a time), then check the inputs
    (`check_inputs` raises when one is not what it must be), refuse a target that is or overlaps an input or
    holds something sftc did not write (unless `force`); yields the stamp to write with."""
    with contextlib.ExitStack() as stack:
        for target in sorted({Path(t) for t in targets}):
            stack.enter_context(locks.exclusive(target, f"{stamp.writer} ({target})"))
        if check_inputs is not None:
            check_inputs()
        inputs = list(inputs)
        for target in targets:
            guard_output(target, inputs, force=force, option=option, fix=fix)
        yield stamp


def integrity_problems(target: Path | str) -> list[str]:
    """What makes `target` not the artifact its marker describes (empty when it is): no artifact, no marker,
    files missing, added or changed. Unchanged size and mtime count as unchanged; otherwise the file is hashed."""
    target = Path(target)
    if not target.exists():
        return [f"{target} is missing"]
    marker = read_marker(target)
    if marker is None:
        return [f"{target} has no sftc marker ({marker_path(target).name}): not written by sftc, or not completely"]
    present = _artifact_files(target) if target.is_dir() else {target.name: target}
    problems = []
    for relative, recorded in marker.files.items():
        path = present.pop(relative, None)
        if path is None:
            problems.append(f"{target / relative if target.is_dir() else target} is missing")
            continue
        stat = path.stat()
        if (stat.st_size, stat.st_mtime_ns) != (recorded["size"], recorded["mtime_ns"]) and file_digest(
            path
        ) != recorded["sha256"]:
            problems.append(f"{path} was changed after sftc wrote it")
    problems += [f"{path} was added after sftc wrote {target}" for path in present.values()]
    return problems
