"""Progress of long work, for people: a bar on the terminal of the command that runs it, and a line now and then
in a log (a Dagster run's, a launched job's, the command's log file), with the figures that tell how it goes and
an ETA.

Work reports through a `Tracker`:

    with Tracker("training", total=300, unit="step", log=context.log.info) as progress:
        progress.update(120, loss=0.81, lr=2.1e-4)

The log lines are the tracker's own: at most one per `every_s`, and one when the work is done. The bar appears
only where a command asked for one with `terminal_bars()` (the `sftc` command line): an asset that `sftc run`
materializes runs in the command's process and gets the bar too; a run of the daemon writes its lines only.
On a stream that is not a terminal (CI, `| tee`) the "bar" is a plain line every `TERMINAL_LINE_EVERY_S`.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TextIO

from sftc_core.text import format_bytes, format_duration, format_number

DEFAULT_EVERY_S = 30.0
TERMINAL_LINE_EVERY_S = 30.0
BYTES = "B"


def format_amount(value: float, unit: str) -> str:
    return format_bytes(value) if unit == BYTES else format_number(int(value) if float(value).is_integer() else value)


def _plural(unit: str, count: float | None) -> str:
    return unit if unit == BYTES or count == 1 else f"{unit}s"


@dataclass(frozen=True)
class Progress:
    """Where a piece of work stands; `initial` is what was done before this process began (a resumed run)."""

    task: str
    done: float
    total: float | None
    unit: str
    elapsed_s: float
    initial: float = 0
    figures: Mapping[str, object] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    @property
    def rate(self) -> float | None:
        """Units per second of the work done here (what a resumed run found done is not counted)."""
        worked = self.done - self.initial
        return worked / self.elapsed_s if worked > 0 and self.elapsed_s > 0 else None

    @property
    def eta_s(self) -> float | None:
        rate = self.rate
        return (self.total - self.done) / rate if rate and self.total is not None else None

    def figures_text(self) -> str:
        """`loss 0.812, lr 0.00021, 14,600 tokens/s`: a rate after its value, other figures after their name."""
        parts = []
        for name, value in self.figures.items():
            text = format_number(value) if isinstance(value, (int, float)) else str(value)
            parts.append(f"{text} {name}" if name.endswith("/s") else f"{name} {text}")
        return ", ".join(parts)

    def line(self) -> str:
        """`training: 120/300 steps (40%), loss 0.812, 1.9 steps/s, ETA 1 min 35 s`; done: `... in 2 min 40 s`."""
        unit = (
            "" if self.unit == BYTES else f" {_plural(self.unit, self.total if self.total is not None else self.done)}"
        )
        amount = format_amount(self.done, self.unit)
        if self.total is not None:
            share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            amount = f"{amount}/{format_amount(self.total, self.unit)}{unit}{share}"
        else:
            amount = f"{amount}{unit}"
        parts = [amount]
        if self.initial:
            parts.append(f"{format_amount(self.initial, self.unit)} resumed")
        if self.figures:
            parts.append(self.figures_text())
        if self.rate is not None:
            parts.append(
                f"{format_amount(self.rate, self.unit)}{'' if self.unit == BYTES else ' ' + _plural(self.unit, 2)}/s"
            )
        if self.finished:
            parts.append(f"in {format_duration(self.elapsed_s)}")
        elif self.eta_s is not None:
            parts.append(f"ETA {format_duration(self.eta_s)}")
        return f"{self.task}: " + ", ".join(parts)


class _Terminal:
    """The stream a command reserved for bars (see `terminal_bars`)."""

    def __init__(self, stream: TextIO, leave: bool):
        self.stream, self.leave = stream, leave
        self.is_tty = bool(getattr(stream, "isatty", lambda: False)())


_TERMINALS: list[_Terminal] = []
# The streams bars are being drawn on, one entry per open bar.
_OPEN_BARS: list[TextIO] = []


@contextlib.contextmanager
def terminal_bars(stream: TextIO | None = None, *, leave: bool = True) -> Iterator[None]:
    """Trackers made inside draw on `stream` (default: stderr): a bar on a terminal, a line every
    TERMINAL_LINE_EVERY_S elsewhere. `leave=False` clears each bar when its work ends."""
    _TERMINALS.append(_Terminal(stream or sys.stderr, leave))
    try:
        yield
    finally:
        _TERMINALS.pop()


def drawing(stream: TextIO) -> bool:
    """Whether a bar is being drawn on `stream` (a line written there should go through `echo`)."""
    return any(open_on is stream for open_on in _OPEN_BARS)


def echo(text: str) -> None:
    """A line on the bars' terminal that does not break a bar being drawn (stdout when no command reserved one)."""
    if not _TERMINALS:
        print(text, flush=True)
        return
    from tqdm import tqdm

    tqdm.write(text, file=_TERMINALS[-1].stream)


class Tracker:
    """One piece of long work: `update(done, **figures)` with the absolute position, `close()` at the end;
    `bar=False` keeps it off the terminal (its log lines stay)."""

    def __init__(
        self,
        task: str,
        total: float | None,
        unit: str = "item",
        *,
        log: Callable[[str], None] | None = None,
        every_s: float = DEFAULT_EVERY_S,
        initial: float = 0,
        bar: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.task, self.total, self.unit, self.initial = task, total, unit, initial
        self._log, self._every_s, self._clock = log, every_s, clock
        # the first lines come one interval after the start: short work writes none
        self._start = self._last_log = self._last_line = clock()
        self._progress = Progress(task, initial, total, unit, 0.0, initial)
        self._closed = self._logged_finish = False
        self._terminal = _TERMINALS[-1] if _TERMINALS and bar else None
        self._bar = None
        if self._terminal is not None and self._terminal.is_tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=task,
                unit=unit,
                unit_scale=unit == BYTES,
                unit_divisor=1024 if unit == BYTES else 1000,
                file=self._terminal.stream,
                dynamic_ncols=True,
                leave=self._terminal.leave,
                mininterval=0.2,
            )
            _OPEN_BARS.append(self._terminal.stream)

    @property
    def progress(self) -> Progress:
        return self._progress

    def update(self, done: float, **figures: object) -> None:
        """The work is at `done` (of `total`); `figures` are shown beside it (loss=0.81, lr=2e-4, ...)."""
        now = self._clock()
        self._progress = Progress(self.task, done, self.total, self.unit, now - self._start, self.initial, figures)
        if self._bar is not None:
            if figures:
                self._bar.set_postfix_str(self._progress.figures_text(), refresh=False)
            self._bar.update(done - self._bar.n)
        elif (
            self._terminal is not None
            and now - self._last_line >= TERMINAL_LINE_EVERY_S
            and not self._progress.finished
        ):
            self._last_line = now
            print(self._progress.line(), file=self._terminal.stream, flush=True)
        if (
            self._log is not None
            and not self._logged_finish
            and (self._progress.finished or now - self._last_log >= self._every_s)
        ):
            self._last_log, self._logged_finish = now, self._progress.finished
            self._log(self._progress.line())

    def advance(self, count: float = 1, **figures: object) -> None:
        self.update(self._progress.done + count, **figures)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            _OPEN_BARS.remove(self._terminal.stream)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@contextlib.contextmanager
def reporting(
    task: str,
    unit: str,
    *,
    log: Callable[[str], None] | None = None,
    every_s: float = DEFAULT_EVERY_S,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Callable[..., None]]:
    """For work that tells its total with its first report: yields `report(done, total, initial=0, **figures)`,
    the tracker made at the first call (`initial`: what a resumed run found done), closed at the end; `clock`: when
    the reported work happened (Tracker's)."""
    trackers: list[Tracker] = []

    def report(done: float, total: float | None, initial: float = 0, **figures: object) -> None:
        if not trackers:
            trackers.append(Tracker(task, total, unit, log=log, every_s=every_s, initial=initial, clock=clock))
        trackers[0].update(done, **figures)

    try:
        yield report
    finally:
        for tracker in trackers:
            tracker.close()
