"""The Hugging Face fine-tune as a launched process, the same on every node and rank (run under torchrun):

    python -m sftc_assets.training.hf_entry --run-settings FILE --model DIR --data DIR --output DIR
                                            [--max-steps N] [--smoke-test] [--resume auto|yes|no] [--device D]

The run settings (training, sft, evaluation sections and the artifact marker's stamp, as JSON) come from the
launching side, which read them at its edge. Progress and the result go back to Dagster through Pipes on global
rank 0; the metrics JSON is printed there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from sftc_assets.training.hf_backend import run_training, training_progress
from sftc_assets.training.pipes_entry import global_rank, open_pipes
from sftc_core.artifacts import Stamp
from sftc_core.configs import EvaluationConfig, SftConfig, TrainingConfig
from sftc_core.text import format_number

RESUME = {"auto": "auto", "yes": True, "no": False}
# Rank 0's training steps as Pipes messages {"kind": "progress", step, max_steps, loss, lr, tokens_per_s[, val_loss]}.
PROGRESS_MESSAGE = "progress"
PROGRESS_MESSAGE_EVERY_S = 1.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sftc_assets.training.hf_entry", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--run-settings", type=Path, required=True, help="JSON with the training, sft and evaluation sections"
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--smoke-test", action="store_true")
    parser.add_argument("--resume", choices=tuple(RESUME), default="auto")
    parser.add_argument("--device", default="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = global_rank()
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        raw = json.loads(args.run_settings.read_text(encoding="utf-8"))
        training, sft, evaluation = (
            TrainingConfig(**raw["training"]),
            SftConfig(**raw["sft"]),
            EvaluationConfig(**raw["evaluation"]),
        )
        stamp = Stamp(**raw["stamp"]) if raw.get("stamp") else None  # the marker the launching side writes with
    except (OSError, ValueError, KeyError) as exc:
        print(f"hf_entry: error: {args.run_settings}: {exc}", file=sys.stderr)
        return 2
    with open_pipes() as pipes, training_progress(logging.getLogger("sftc.training").info) as progress:
        last_sent = [-float("inf")]

        def report(row: dict) -> None:
            progress(row)  # the job log's progress lines
            now = time.monotonic()
            # The launching side's bar and Dagster log follow these; one a second is plenty for a bar.
            if now - last_sent[0] >= PROGRESS_MESSAGE_EVERY_S or row["step"] == row["max_steps"] or "val_loss" in row:
                last_sent[0] = now
                pipes.report_custom_message({"kind": PROGRESS_MESSAGE, **row})
            if "val_loss" in row:
                pipes.log.info(
                    f"step {row['step']}: training loss {format_number(row['loss'])}, "
                    f"validation loss {format_number(row['val_loss'])}, {format_number(row['tokens_per_s'])} tokens/s"
                )

        try:
            result = run_training(
                args.model,
                args.data,
                args.output,
                training,
                sft,
                evaluation,
                max_steps=args.max_steps,
                smoke_test=args.smoke_test,
                resume=RESUME[args.resume],
                device=args.device,
                on_step=report,
                stamp=stamp,
            )
        except (ValueError, FileNotFoundError) as exc:
            print(f"hf_entry: error: {exc}", file=sys.stderr)
            return 2
        if rank == 0:
            pipes.report_custom_message({"kind": "metrics", **result.metrics})
            print(json.dumps(result.metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
