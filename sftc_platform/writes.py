"""How an asset writes its artifact: one writer at a time, never over what sftc did not write, from inputs that
are whole and as sftc wrote them (sftc_core.artifacts, sftc_core.locks).

`writing(settings, asset, targets, inputs)` locks the targets for the block, refuses a target that holds
something sftc did not write, and fails at once, naming the file and the asset to re-materialize, when an
input is missing, half-written or changed since it was written. It yields the stamp to write with, so the
artifact appears with its marker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import dagster as dg

from sftc_core import artifacts
from sftc_core.artifacts import (
    OutputError,
    Stamp,
    integrity_problems,
    is_ours,
    read_marker,
)
from sftc_core.settings import Settings
from sftc_platform.metadata import stamp

# (upstream asset, its partitions: None for an unpartitioned asset, else the months read)
Input = tuple[str, Iterable[str] | None]


def input_problems(settings: Settings, inputs: Iterable[Input]) -> list[str]:
    """Every input artifact that is not whole and as sftc wrote it, with the asset that rebuilds it. A month of
    a monthly input that was never materialized is not a problem (the reader takes the months there are); an
    unpartitioned input must be there."""
    problems = []
    for asset, partitions in inputs:
        for partition in [None] if partitions is None else partitions:
            for target in settings.artifacts_of(asset, partition):
                if partition is not None and not target.exists() and not is_ours(target):
                    continue
                problems += [
                    f"{problem} (re-materialize {asset}{f' {partition}' if partition else ''})"
                    for problem in integrity_problems(target)
                ]
    return problems


@contextlib.contextmanager
def writing(settings: Settings, asset: str, targets: Sequence[Path], inputs: Iterable[Input] = ()) -> Iterator[Stamp]:
    def check_inputs() -> None:
        problems = input_problems(settings, inputs)
        if problems:
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            raise dg.Failure(
                f"{asset}: its inputs are not what sftc wrote, nothing was done: {shown}", allow_retries=False
            )

    # Written by an sftc from before artifacts carried markers, a data directory has none:
    # `make clean` starts it afresh.
    fix = (
        "move it away (a data directory of an sftc older than its artifact markers: `make clean`), "
        f"then materialize {asset} again"
    )
    try:
        with artifacts.writing(
            targets, stamp(settings, asset), option=asset, fix=fix, check_inputs=check_inputs
        ) as asset_stamp:
            yield asset_stamp
    except OutputError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from None


def data_version(targets: Sequence[Path]) -> dg.DataVersion:
    """The content of the written artifact as Dagster's data version: the hash of its markers' content hashes."""
    markers = [read_marker(target) for target in targets]
    return dg.DataVersion("-".join(marker.content_hash for marker in markers if marker is not None))
