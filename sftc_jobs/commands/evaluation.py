"""`sftc evaluate`: greedy generation over the test split, action parsing, forward returns, the eval CSV."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from sftc_core.settings import Settings
from sftc_jobs.commands.outputs import add_force, writing_output


def _months(text: str) -> list[str]:
    months = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in months if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", m)]
    if bad or not months:
        raise argparse.ArgumentTypeError(f"expected months written YYYY-MM, comma-separated (e.g. 2012-09,2012-10), got {text!r}")
    return months


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate the fine-tuned model on the test split and write the eval CSV",
        description="Greedy generation over the test split's prompts, action extraction and forward returns "
        "(spec/eval-and-backtest.md); prices from the profile's price source.",
    )
    parser.add_argument("--model", type=Path, help="fine-tuned HF checkpoint (default: <data dir>/models/sft)")
    parser.add_argument("--dataset", type=Path, help="hf_splits DatasetDict directory (default: <data dir>/hf_splits)")
    parser.add_argument("--results", type=Path, required=True, help="eval CSV to write")
    parser.add_argument("--max-samples", type=_positive, help="evaluate only the first N test theses (in CSV order)")
    parser.add_argument("--batch-size", type=_positive, help="generation batch size (default: the profile's evaluation.batch_size)")
    parser.add_argument("--max-new-tokens", type=_positive, help="default: the profile's evaluation.max_new_tokens")
    parser.add_argument("--months", type=_months, help="only theses with as_of_date in these months, e.g. 2012-09,2012-10")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    add_force(parser)
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from sftc_assets.evaluation.evaluate import (
        evaluate_records,
        load_model,
        load_test_records,
    )
    from sftc_assets.evaluation.results import write_eval_csv
    from sftc_core.metrics import classification_metrics
    from sftc_resources.prices import price_source_from_settings

    paths = settings.paths
    dataset, model_dir = args.dataset or paths.hf_splits, args.model or paths.sft_model
    records = load_test_records(dataset, months=args.months, max_samples=args.max_samples)
    model, tokenizer = load_model(model_dir, args.device)
    frame = evaluate_records(
        model, tokenizer, records, price_source_from_settings(settings), settings.sft,
        max_new_tokens=args.max_new_tokens or settings.profile.evaluation.max_new_tokens,
        batch_size=args.batch_size or settings.profile.evaluation.batch_size,
        calendar=settings.prices.calendar,
        cpu_threads=settings.profile.evaluation.cpu_threads,
    )  # fmt: skip
    with writing_output(args, [args.results], inputs=[model_dir, dataset], option="--results") as stamp:
        write_eval_csv(frame, args.results, stamp)
    figures = classification_metrics(frame["true_action"].to_numpy(object), frame["predicted_action"].to_numpy(object))
    summary = {k: figures[k] for k in ("rows", "parse_rate", "accuracy", "mcc")}
    print(json.dumps({"results": str(args.results), **summary, "return_status": frame["return_status"].value_counts().to_dict()}, indent=2))
    return 0
