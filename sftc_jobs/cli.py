"""The `sftc` command line: one subcommand per step, each calling the same logic as its asset.

The edge: the settings are read once here and handed to the subcommand (`func(args, settings) -> int`).
Each module of sftc_jobs/commands/ registers its subcommands and imports the stage logic inside them, so
`sftc --help` loads neither torch nor Dagster.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

from sftc_core.configs import ConfigError
from sftc_core.settings import load_settings
from sftc_jobs.commands import (
    backtest,
    chain,
    checkpoints,
    evaluation,
    nemo,
    sft_data,
    theses,
    training,
)

COMMAND_MODULES = (theses, sft_data, checkpoints, training, nemo, evaluation, backtest, chain)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (a caller may swap it, as pytest does)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(verbose: bool = False, log_dir: Path = Path("logs")) -> None:
    """Console and a dated file under logs/ (the CLI's counterpart of Dagster's logger)."""
    handlers: list[logging.Handler] = [_CurrentStderrHandler()]
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_dir / f"sftc-{dt.date.today():%Y%m%d}.log", encoding="utf-8"))
    except OSError:
        pass  # a read-only working directory still gets console logs
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sftc", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args, load_settings()) or 0)
    except (ConfigError, FileNotFoundError, NotADirectoryError, ValueError) as exc:
        print(f"sftc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sftc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
