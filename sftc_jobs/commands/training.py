"""`sftc train`: fine-tune the BF16 checkpoint on the NeMo JSONL pairs (the `sft_model` asset's logic)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sftc_core.configs import load_sft_config
from sftc_core.settings import Settings
from sftc_jobs.commands.outputs import add_force, writing_output


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune the model (Hugging Face backend on CPU/GPU, NeMo backend on GPU nodes)",
        description=(
            "Fine-tune the BF16 checkpoint on the NeMo JSONL pairs. Hyperparameters come from the profile's "
            "`training:` section; TRAIN_BACKEND picks the default backend."
        ),
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="SFT config (special tokens, max_seq_length; default: configs/sft_config.yaml)")
    parser.add_argument("--output", type=Path, metavar="DIR", help="output directory (default: <data dir>/models/sft)")
    parser.add_argument("--backend", choices=("hf", "nemo"), help="training backend (default: TRAIN_BACKEND, else the profile's)")
    parser.add_argument("--model", type=Path, metavar="DIR", help="BF16 HF checkpoint to start from (default: <data dir>/checkpoints/bf16)")
    parser.add_argument("--data", type=Path, metavar="DIR", help="directory with training.jsonl and validation.jsonl (default: <data dir>/nemo_jsonl)")
    parser.add_argument("--max-steps", type=int, metavar="N", help="override the profile's training.max_steps")
    parser.add_argument("--smoke-test", action="store_true", help="10 steps on a few samples: proves the path on a new node")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint under OUTPUT/checkpoints")
    parser.add_argument("--device", default="auto", help="hf backend: auto (CUDA when present), cpu, cuda, cuda:N")
    add_force(parser)
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps {args.max_steps}: must be at least 1")
    if args.config:
        settings = settings.model_copy(update={"sft": load_sft_config(args.config)})
    paths = settings.paths
    output = args.output or paths.sft_model
    model = args.model or paths.bf16_checkpoint
    data = args.data or paths.nemo_jsonl
    with writing_output(args, [output], inputs=[model, data]) as stamp:
        if (args.backend or settings.train_backend) == "nemo":
            return _train_nemo(args, settings, model, data, output, stamp)

        from sftc_assets.training.hf_backend import (
            run_training,  # torch and transformers load only for training
        )

        result = run_training(
            model,
            data,
            output,
            settings.profile.training,
            settings.sft,
            settings.profile.evaluation,
            max_steps=args.max_steps,
            smoke_test=args.smoke_test,
            resume=args.resume,
            device=args.device,
            stamp=stamp,
        )
    print(json.dumps({"output": str(result.output_dir), **result.metrics}, indent=2))
    return 0


def _train_nemo(args: argparse.Namespace, settings: Settings, model: Path, data: Path, output: Path, stamp) -> int:
    """The NeMo backend: import, fine-tune, merge and export in NeMo's own environment (configs/nemo/finetune.yaml)."""
    from sftc_assets.training.nemo_runner import NemoEntryError, run_nemo_training

    try:
        metrics = run_nemo_training(
            settings.nemo_python, settings.finetune, model, settings.paths.nemo_model, data, output,
            max_steps=args.max_steps, smoke_test=args.smoke_test, stamp=stamp,
        )  # fmt: skip
    except NemoEntryError as exc:
        print(f"sftc train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"output": str(output), **metrics}, indent=2))
    return 0
