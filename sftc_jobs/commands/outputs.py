"""What every writing subcommand shares: `--force`, and writing its output safely (sftc_core.artifacts.writing:
locked, never over an input or over what sftc did not write, marked with the command and its options)."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from sftc_core import artifacts
from sftc_core.artifacts import Stamp


def add_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="replace an existing output that sftc did not write")


def command_stamp(args: argparse.Namespace) -> Stamp:
    """The marker's writer is the command; its config hash that of the options it was given (paths aside:
    where the files are is not how they were made)."""
    options = {
        k: str(v)
        for k, v in sorted(vars(args).items())
        if k not in ("func", "force", "verbose") and not isinstance(v, Path)
    }
    return Stamp(f"sftc {args.command}", hashlib.sha256(json.dumps(options).encode()).hexdigest()[:12])


@contextlib.contextmanager
def writing_output(
    args: argparse.Namespace, outputs: Sequence[Path], inputs: Iterable[Path | None] = (), option: str = "--output"
) -> Iterator[Stamp]:
    with artifacts.writing(
        outputs, command_stamp(args), inputs=inputs, force=getattr(args, "force", False), option=option
    ) as stamp:
        yield stamp
