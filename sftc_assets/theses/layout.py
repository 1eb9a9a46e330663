"""The raw XML tree on disk: which files are theses, and which month directory a file lives in.

Layout: `<root>/YYYY/MM/**/*.xml`. Names starting with "." are skipped at any depth (hidden files,
and the temporary directories of atomic writes, which must never be read half-written). Only regular files
inside the tree are read: an unreadable directory, a FIFO or device named *.xml, and a symlink leading out
of the tree stop the parse with the path named, never skipped in silence. A symlink to a directory inside
the tree is not followed (its files are read where they are).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path


class CorpusError(ValueError):
    """The corpus as a whole cannot be read (no files, an unreadable file): the run stops, nothing is written."""


_MONTH_DIR = re.compile(r"([0-9]{4})/(0[1-9]|1[0-2])/")


def _refuse_unreadable(error: OSError) -> None:
    raise CorpusError(
        f"{error.filename}: cannot read this directory ({error.strerror}); "
        "give it read access or move it out of the input tree"
    )


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def thesis_files(root: Path) -> list[str]:
    """Every `*.xml` under `root` at any depth, as POSIX paths relative to `root`, sorted."""
    root = Path(root)
    real_root = root.resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_refuse_unreadable):
        kept = []
        for name in dirnames:
            path = Path(dirpath) / name
            if name.startswith("."):
                continue
            if path.is_symlink():
                if not _inside(path.resolve(), real_root):
                    raise CorpusError(
                        f"{path}: a symlink leading out of the input tree (to {path.resolve()}); "
                        f"theses are read only inside {root}"
                    )
                continue  # inside the tree: walked where it really is
            kept.append(name)
        dirnames[:] = kept
        rel_dir = os.path.relpath(dirpath, root)
        prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        for name in filenames:
            if not name.endswith(".xml") or name.startswith("."):
                continue
            path = Path(dirpath) / name
            if path.is_symlink() and not _inside(path.resolve(), real_root):
                raise CorpusError(
                    f"{path}: a symlink leading out of the input tree (to {path.resolve()}); "
                    f"theses are read only inside {root}"
                )
            try:
                mode = path.stat().st_mode
            except OSError as exc:
                raise CorpusError(f"{path}: cannot read ({exc.strerror}); a broken link or a vanished file") from None
            if not stat.S_ISREG(mode):
                raise CorpusError(
                    f"{path}: not a regular file (a FIFO, socket or device named *.xml); remove it from the input tree"
                )
            found.append(prefix + name)
    return sorted(found)


def month_of_file(source_file: str) -> str | None:
    """`YYYY-MM` for a file under `YYYY/MM/` of the root, None for a file anywhere else."""
    match = _MONTH_DIR.match(source_file)
    return f"{match[1]}-{match[2]}" if match else None


def observe_month(month_dir: Path) -> dict:
    """File count and total bytes of one month's directory (0 and 0 when it does not exist)."""
    files = thesis_files(month_dir) if month_dir.is_dir() else []
    return {"files": len(files), "bytes": sum((month_dir / f).stat().st_size for f in files)}
