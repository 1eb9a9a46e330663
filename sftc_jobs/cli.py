"""The `sftc` command line: one subcommand per step, each calling the same logic as its asset.

The edge: the settings are read once here and handed to the subcommand (`func(args, settings) -> int`).
Each module of sftc_jobs/commands/ registers its subcommands and imports the stage logic inside them, so
`sftc --help` loads neither torch nor Dagster.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from sftc_core.configs import ConfigError
from sftc_core.progress import terminal_bars
from sftc_core.settings import load_settings
from sftc_jobs.commands import (
    backtest,
    bundle,
    chain,
    checkpoints,
    evaluation,
    gpu_check,
    nemo,
    sft_data,
    theses,
    training,
)
from sftc_jobs.terminal import log_traceback, setup_logging

COMMAND_MODULES = (theses, sft_data, checkpoints, training, nemo, evaluation, backtest, chain, gpu_check, bundle)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sftc", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help=(
            "everything on the terminal too, at debug level: "
            "Dagster's event stream, libraries' logs and warnings (otherwise in logs/)"
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.log_file = log_file = setup_logging(args.verbose)
    try:
        with terminal_bars():  # long work shows a bar on this terminal (a line now and then on a pipe)
            return int(args.func(args, load_settings()) or 0)
    except KeyboardInterrupt:
        print(f"sftc {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure ends in one line; the traceback goes to the log file
        log_traceback("sftc %s failed", args.command)
        print(
            f"sftc {args.command}: error: {_one_line(exc)}" + (f" (details: {log_file})" if log_file else ""),
            file=sys.stderr,
        )
        return 2


# What to do about a system error that reached here without a message of ours (errno -> the fix).
_OS_FIXES = {
    errno.EACCES: "give this user access to it (chmod/chown), or choose another path",
    errno.EPERM: "give this user access to it (chmod/chown), or choose another path",
    errno.ENOENT: "check the path",
    errno.ENOSPC: "free space on that disk, or choose another data directory",
    errno.EROFS: "the file system is read-only: choose another path",
    errno.EISDIR: "a directory is where a file was expected: choose another path",
    errno.ENOTDIR: "a file is where a directory was expected: choose another path",
}


def _one_line(exc: Exception) -> str:
    """The project's own message as it is; a bare system error as file, problem and fix; anything else with its kind."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.filename is not None:
        fix = _OS_FIXES.get(exc.errno, "check the path and its permissions")
        return f"{exc.filename}: {exc.strerror or os.strerror(exc.errno)}; {fix}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    ours = isinstance(exc, (ConfigError, ValueError, OSError, RuntimeError))
    return text if ours else f"{type(exc).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
