"""`sftc xml-to-jsonl` and `sftc make-sample-corpus`: the theses stage from the command line."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from sftc_assets.theses.parser import (
    CorpusError,
    parse_corpus,
    summary_line,
    write_jsonl_outputs,
)
from sftc_core.settings import Settings
from sftc_jobs.commands.outputs import add_force, writing_output


def default_rejects_path(output: Path) -> Path:
    """`out.jsonl` -> `out.rejects.jsonl` (any other name gets `.rejects.jsonl` appended)."""
    name = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(f"{name}.rejects.jsonl")


def xml_to_jsonl(args: argparse.Namespace, settings: Settings) -> int:
    rejects = args.rejects or default_rejects_path(args.output)
    if rejects.absolute() == args.output.absolute():
        raise CorpusError(f"--rejects {rejects} is the same file as --output; give another path")
    with writing_output(args, [args.output, rejects], inputs=[args.input_dir]) as stamp:
        result = parse_corpus(args.input_dir)
        try:
            write_jsonl_outputs(result, args.output, rejects, stamp)
        except OSError as exc:
            raise CorpusError(f"cannot write {exc.filename or args.output}: {exc.strerror or exc}") from exc
    print(summary_line(result, args.output))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    xml = subparsers.add_parser(
        "xml-to-jsonl",
        help="validate thesis XML files into accepted records and reject lines (JSONL)",
        description="Parse every *.xml under --input-dir (docs/thesis-xml.md). Exit 0 whatever was rejected; "
        "2 when the input cannot be read or the output cannot be written.",
    )
    xml.add_argument("--input-dir", required=True, type=Path, help="root of the XML tree (any depth)")
    xml.add_argument("--output", required=True, type=Path, help="accepted records, one JSON object a line")
    xml.add_argument("--rejects", type=Path, help="reject lines (default: OUTPUT with .rejects.jsonl for .jsonl)")
    add_force(xml)
    xml.set_defaults(func=xml_to_jsonl)

    sample = subparsers.add_parser(
        "make-sample-corpus",
        help="write thesis XML from real daily prices (the toy profile's corpus), DIR/YYYY/MM/*.xml",
        description="Whole months from --start's to --end's; defaults from the profile's corpus settings. "
        "Deterministic: the same options give byte-identical files.",
    )
    sample.add_argument(
        "--out", required=True, type=Path, help="output root (each month's directory is replaced whole)"
    )
    sample.add_argument(
        "--tickers",
        type=lambda text: [t.strip().upper() for t in text.split(",") if t.strip()],
        help="comma-separated, e.g. AAPL,MSFT,IBM,GOOG",
    )
    sample.add_argument(
        "--start",
        type=dt.date.fromisoformat,
        default=dt.date(2009, 1, 1),
        help="first date YYYY-MM-DD (its whole month)",
    )
    sample.add_argument(
        "--end",
        type=dt.date.fromisoformat,
        default=dt.date(2012, 12, 31),
        help="last date YYYY-MM-DD (its whole month)",
    )
    sample.add_argument("--per-month", type=int, help="theses per ticker and month")
    sample.add_argument("--seed", type=int)
    add_force(sample)
    sample.set_defaults(func=make_sample_corpus)


def make_sample_corpus(args: argparse.Namespace, settings: Settings) -> int:
    from sftc_assets.theses.sample_corpus import write_sample_corpus
    from sftc_core.months import months_between
    from sftc_core.paths import month_dir

    base = settings.profile.corpus
    overrides = {"tickers": args.tickers, "per_month": args.per_month, "seed": args.seed}
    config = base.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    if not config.tickers or config.per_month < 1:
        raise ValueError(
            f"make-sample-corpus needs --tickers and --per-month >= 1 (the {settings.profile_name} profile has none)"
        )
    first, last = f"{args.start:%Y-%m}", f"{args.end:%Y-%m}"
    with writing_output(
        args, [month_dir(args.out, month) for month in months_between(first, last)], option="--out"
    ) as stamp:
        result = write_sample_corpus(args.out, first, last, config, stamp)
    print(
        f"{result['theses']} theses in {result['files']} files over {result['months']} months -> {args.out} "
        f"(actions: {result['actions']})"
    )
    return 0
