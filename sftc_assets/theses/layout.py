"""The raw XML tree on disk: which files are theses, and which month directory a file lives in.

Layout: `<root>/YYYY/MM/**/*.xml`. Names starting with "." are skipped at any depth (hidden files,
and the temporary directories of atomic writes, which must never be read half-written).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_MONTH_DIR = re.compile(r"([0-9]{4})/(0[1-9]|1[0-2])/")


def thesis_files(root: Path) -> list[str]:
    """Every `*.xml` under `root` at any depth, as POSIX paths relative to `root`, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, root)
        prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        found.extend(prefix + name for name in filenames if name.endswith(".xml") and not name.startswith("."))
    return sorted(found)


def month_of_file(source_file: str) -> str | None:
    """`YYYY-MM` for a file under `YYYY/MM/` of the root, None for a file anywhere else."""
    match = _MONTH_DIR.match(source_file)
    return f"{match[1]}-{match[2]}" if match else None


def observe_month(month_dir: Path) -> dict:
    """File count and total bytes of one month's directory (0 and 0 when it does not exist)."""
    files = thesis_files(month_dir) if month_dir.is_dir() else []
    return {"files": len(files), "bytes": sum((month_dir / f).stat().st_size for f in files)}
