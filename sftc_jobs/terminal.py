"""What the `sftc` command line shows on the terminal, and what goes to its log file under logs/.

Every command logs to `logs/sftc-YYYYMMDD.log` (everything at INFO, DEBUG with `-v`). The terminal gets sftc's
own INFO lines and everyone's warnings; other libraries' INFO (alembic, Dagster's instance) and Python warnings
(BetaWarning, ...) go to the file only, unless `-v`. `reserved_terminal()` goes further for `sftc run`: the
terminal carries only the command's own lines and progress bars, and everything else a run writes (Dagster's
event stream, launched jobs' logs, third-party chatter on stderr, even from child processes) goes to the file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from sftc_core.progress import drawing, echo, terminal_bars

LOG_DIR = Path("logs")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Dagster's event stream of the chain's runs (sftc_jobs/chain.py): the log file, and the terminal with -v.
DAGSTER_EVENTS = "sftc.dagster"


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (a caller may swap it, as pytest does), above
    the progress bar being drawn there, if any."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if drawing(sys.stderr):
            echo(self.format(record))
        else:
            super().emit(record)


class _ConsoleFilter(logging.Filter):
    """sftc's INFO and everyone's warnings; no Python warnings (for developers: the file has them), none of
    Dagster's events (the file has the stream)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "py.warnings":
            return False
        return record.levelno >= logging.WARNING or (record.name.startswith("sftc") and record.name != DAGSTER_EVENTS)


# Tracebacks go to the log file only; the terminal gets the one-line error.
_TRACEBACKS = logging.getLogger("sftc.traceback")
_TRACEBACKS.propagate = False


def log_file_path(log_dir: Path = LOG_DIR) -> Path:
    return log_dir / f"sftc-{dt.date.today():%Y%m%d}.log"


def setup_logging(verbose: bool = False, log_dir: Path = LOG_DIR) -> Path | None:
    """Console and a dated file under logs/ (the CLI's counterpart of Dagster's logger); returns the file."""
    console = _CurrentStderrHandler()
    if not verbose:
        console.addFilter(_ConsoleFilter())
    handlers: list[logging.Handler] = [console]
    log_file = log_file_path(log_dir)
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    except OSError:
        log_file = None  # a read-only working directory still gets console logs
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT, handlers=handlers, force=True
    )
    logging.captureWarnings(True)
    logging.getLogger(DAGSTER_EVENTS).setLevel(logging.DEBUG)  # the whole event stream, whatever the root level
    _TRACEBACKS.handlers = handlers[1:] + (handlers[:1] if verbose else []) or [logging.NullHandler()]
    return log_file


def log_traceback(message: str, *args) -> None:
    _TRACEBACKS.error(message, *args, exc_info=True)


class _Say(logging.Handler):
    """A logger's messages as plain lines on the reserved terminal (above any progress bar)."""

    def emit(self, record: logging.LogRecord) -> None:
        echo(record.getMessage())


class _OwnWarnings(logging.Filter):
    """sftc's own warnings (a lock being waited for, ...), not the command's lines nor Dagster's events."""

    def __init__(self, command: logging.Logger):
        super().__init__()
        self.command = command.name

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        return (
            record.levelno >= logging.WARNING and name.startswith("sftc") and name not in (DAGSTER_EVENTS, self.command)
        )


@contextlib.contextmanager
def reserved_terminal(log_file: Path | None, say: logging.Logger, verbose: bool = False) -> Iterator[None]:
    """For the block, the terminal carries `say`'s messages, sftc's own warnings and progress bars only; whatever
    else is written to stderr (by Python, by libraries in C, by child processes) is appended to `log_file`. With
    `verbose`, or without a log file, nothing is hidden: the console shows everything as usual, bars included."""
    terminal = sys.stderr
    handler, own_warnings = _Say(), _Say()
    own_warnings.addFilter(_OwnWarnings(say))
    if verbose or log_file is None:
        with terminal_bars(terminal, leave=False):
            yield
        return
    say.addHandler(handler)
    root = logging.getLogger()
    consoles = [h for h in root.handlers if isinstance(h, _CurrentStderrHandler)]
    for console in consoles:  # the file handler keeps every record; the console would write them to the file twice
        root.removeHandler(console)
    root.addHandler(own_warnings)
    sys.stderr.flush()
    saved_fd = os.dup(2)
    try:
        with (
            open(log_file, "a", encoding="utf-8", buffering=1) as sink,
            open(os.dup(saved_fd), "w", encoding="utf-8", buffering=1, closefd=True) as tty,
        ):
            os.dup2(sink.fileno(), 2)
            try:
                with (
                    contextlib.redirect_stderr(sink),
                    terminal_bars(tty if terminal is sys.__stderr__ else terminal, leave=False),
                ):
                    yield
            finally:
                sink.flush()
                os.dup2(saved_fd, 2)
    finally:
        os.close(saved_fd)
        say.removeHandler(handler)
        root.removeHandler(own_warnings)
        for console in consoles:
            root.addHandler(console)
