"""The `sftc` command line: one subcommand per step, each calling the same logic as its asset.

Each stage folder has a `commands.py` with `register(subparsers)`; a subcommand sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import logging
import sys
from pathlib import Path

from sftc_resources.settings import ConfigError

COMMAND_MODULES = (
    "sftc_assets.theses.commands",
    "sftc_assets.datasets.commands",
    "sftc_assets.checkpoints.commands",
    "sftc_assets.training.commands",
    "sftc_assets.training.nemo_commands",
    "sftc_assets.evaluation.commands",
    "sftc_assets.backtest.commands",
    "sftc_jobs.commands",
)


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
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a stage without commands yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, NotADirectoryError, ValueError) as exc:
        print(f"sftc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sftc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
