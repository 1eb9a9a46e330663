"""`sftc train`: fine-tune the BF16 checkpoint on the NeMo JSONL pairs (the `sft_model` asset's logic)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sftc_resources.paths import ArtifactPaths
from sftc_resources.settings import CONFIG_DIR, load_settings, load_sft_config


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune the model (Hugging Face backend on CPU/GPU, NeMo backend on GPU nodes)",
        description=(
            "Fine-tune the BF16 checkpoint on the NeMo JSONL pairs. Hyperparameters come from the profile's "
            "`training:` section; TRAIN_BACKEND picks the default backend."
        ),
    )
    parser.add_argument("--config", type=Path, default=CONFIG_DIR / "sft_config.yaml", metavar="FILE", help="SFT config (special tokens, max_seq_length)")
    parser.add_argument("--output", type=Path, metavar="DIR", help="output directory (default: <data dir>/models/sft)")
    parser.add_argument("--backend", choices=("hf", "nemo"), help="training backend (default: TRAIN_BACKEND, else the profile's)")
    parser.add_argument("--model", type=Path, metavar="DIR", help="BF16 HF checkpoint to start from (default: <data dir>/checkpoints/bf16)")
    parser.add_argument("--data", type=Path, metavar="DIR", help="directory with training.jsonl and validation.jsonl (default: <data dir>/nemo_jsonl)")
    parser.add_argument("--max-steps", type=int, metavar="N", help="override the profile's training.max_steps")
    parser.add_argument("--smoke-test", action="store_true", help="10 steps on a few samples: proves the path on a new node")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint under OUTPUT/checkpoints")
    parser.add_argument("--device", default="auto", help="hf backend: auto (CUDA when present), cpu, cuda, cuda:N")
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps {args.max_steps}: must be at least 1")
    paths = ArtifactPaths(settings.data_dir)
    args.output = args.output or paths.sft_model
    args.model = args.model or paths.bf16_checkpoint
    args.data = args.data or paths.nemo_jsonl
    sft = load_sft_config(args.config)
    backend = args.backend or settings.train_backend
    if backend == "nemo":
        return _train_nemo(args, paths)

    from sftc_assets.training.hf_backend import run_training  # torch and transformers load only for training

    result = run_training(
        args.model,
        args.data,
        args.output,
        settings.profile.training,
        sft,
        settings.profile.evaluation,
        max_steps=args.max_steps,
        smoke_test=args.smoke_test,
        resume=args.resume,
        device=args.device,
    )
    print(json.dumps({"output": str(result.output_dir), **result.metrics}, indent=2))
    return 0


def _train_nemo(args: argparse.Namespace, paths: ArtifactPaths) -> int:
    """The NeMo backend: import, fine-tune, merge and export in NeMo's own environment (configs/nemo/finetune.yaml)."""
    from sftc_assets.training.nemo_runner import NemoEntryError, run_nemo_training

    try:
        metrics = run_nemo_training(
            args.model, paths.nemo_model, args.data, args.output, max_steps=args.max_steps, smoke_test=args.smoke_test
        )
    except NemoEntryError as exc:
        print(f"sftc train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"output": str(args.output), **metrics}, indent=2))
    return 0
