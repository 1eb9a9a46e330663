"""The NeMo fine-tuning data: `training.jsonl`, `validation.jsonl`, `test.jsonl`, one `{"input", "output"}` a line.

One contract for every reader and writer: the export checks what it writes with it, the Hugging Face backend and
the NeMo entry read through it, the `nemo_jsonl` check runs it. Standard library only (and sftc_core.io), so the
NeMo environment imports it too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from sftc_core.io import iter_jsonl

NEMO_FILES = {"train": "training.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}
FIELDS = ("input", "output")
FIX = 're-export the files with `sftc export-nemo` (lines are {"input": prompt, "output": target})'


class NemoDataError(ValueError):
    """A NeMo JSONL line breaks the contract; the message names the file, the line and the field."""


def split_file(dataset_root: Path | str, split: str) -> Path:
    return Path(dataset_root) / NEMO_FILES[split]


def line_problems(row: object, special_tokens: Sequence[str] = ()) -> list[str]:
    """What is wrong with one line: both fields non-empty strings, the output carrying every special token."""
    if not isinstance(row, dict):
        return [f"expected a JSON object, got {type(row).__name__}"]
    problems = [
        f"field '{f}' missing or not a non-empty string"
        for f in FIELDS
        if not isinstance(row.get(f), str) or not row[f].strip()
    ]
    if not problems:
        missing = [t for t in special_tokens if t not in row["output"]]
        if missing:
            problems.append(f"output lacks special token(s) {', '.join(missing)}")
    return problems


def file_problems(path: Path | str, special_tokens: Sequence[str] = ()) -> tuple[int, list[str]]:
    """(lines read, every problem as "file:line: what") of one file: the check of what was written."""
    path = Path(path)
    lines, problems = 0, []
    with open(path, encoding="utf-8") as fh:
        for lineno, text in enumerate(fh, start=1):
            lines += 1
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{lineno}: not valid JSON ({exc.msg})")
                continue
            problems.extend(f"{path}:{lineno}: {p}" for p in line_problems(row, special_tokens))
    return lines, problems


def read_pairs(path: Path | str) -> list[dict[str, str]]:
    """The lines of one file; the first bad line raises NemoDataError naming file, line, field and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing; materialize nemo_jsonl first (sftc export-nemo), or pass the directory that has it"
        )
    rows = []
    for lineno, row in iter_jsonl(path):
        problems = line_problems(row)
        if problems:
            raise NemoDataError(f"{path}:{lineno}: {problems[0]}; {FIX}")
        rows.append(row)
    return rows
