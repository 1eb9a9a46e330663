"""`sftc make-toy-checkpoint`, `sftc convert-fp8`, `sftc preflight`: the checkpoint steps from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sftc_core.settings import Settings
from sftc_jobs.commands.outputs import add_force, writing_output


def register(subparsers: argparse._SubParsersAction) -> None:
    toy = subparsers.add_parser(
        "make-toy-checkpoint",
        help="build the tiny DeepSeek-V3 and its tokenizer",
        description=(
            "A DeepSeek-V3 of the real architecture and tensor names at toy size (the profile's model section), with a "
            "BPE tokenizer of the hf_splits train split and weights pretrained (model.pretraining) on the prompt side "
            "of its records dated in the training window, as the base_checkpoint asset; with --corpus, the tokenizer "
            "of that corpus and random weights. --fp8 writes it in the release layout (sharded safetensors, FP8 "
            "weights with their block scales), as convert-fp8 reads the real one."
        ),
    )
    toy.add_argument("--out", required=True, type=Path, help="output directory (replaced whole)")
    toy.add_argument("--fp8", action="store_true", help="write the FP8 release layout (sharded, _scale_inv)")
    toy.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="JSONL file or directory for the tokenizer, weights left random (default: the data dir's hf_splits)",
    )
    toy.add_argument("--seed", type=int, default=None, help="model init seed (default: the profile's model.seed)")
    toy.add_argument("--vocab-size", type=int, default=None, help="default: the profile's model.vocab_size")
    add_force(toy)
    toy.set_defaults(func=_make_toy_checkpoint)

    convert = subparsers.add_parser(
        "convert-fp8",
        help="FP8 (block-scaled) -> BF16 checkpoint, streamed and resumable",
        description=(
            "Every FP8 weight times its 128x128 block scale, shard by shard (Triton on CUDA, the same math in torch on "
            "the CPU), the other tensors and files copied; interrupted, it resumes from the shards done. The output "
            "replaces --output whole when complete; a progress bar on the terminal unless --no-progress."
        ),
    )
    convert.add_argument("--source", required=True, type=Path, help="FP8 checkpoint directory (HF layout)")
    convert.add_argument("--output", required=True, type=Path, help="BF16 checkpoint directory (replaced when done)")
    convert.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when available")
    convert.add_argument("--no-progress", action="store_true", help="no progress bar (logs and the summary only)")
    add_force(convert)
    convert.set_defaults(func=_convert_fp8)

    preflight = subparsers.add_parser(
        "preflight",
        help=(
            "GPU readiness: this node's GPUs, checkpoint and disk, "
            "the GPU plan of the full profile (the validation report's list), and what the GPU run will cost"
        ),
        description=(
            "This node's CUDA, GPUs, Triton FP8 kernel, base checkpoint and disk against configs/nemo/finetune.yaml, "
            "the GPU plan of the full profile (the validation report's checks), then the estimate of its GPU run: "
            "GPU-hours, wall-clock hours and cost per phase at the price and rates of configs/cluster.yaml "
            "(`estimate:`). Exit 1 when a check fails."
        ),
    )
    preflight.add_argument("--json", action="store_true", help="print JSON instead of the table")
    preflight.add_argument("--no-nemo", action="store_true", help="skip importing NeMo in its environment")
    preflight.set_defaults(func=_preflight)


def _make_toy_checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    from sftc_assets.checkpoints.pretrain import pretraining_texts
    from sftc_assets.checkpoints.toy_model import corpus_texts_from, make_toy_base, make_toy_checkpoint
    from sftc_assets.sft_data.nemo_export import training_texts

    given = {"seed": args.seed, "vocab_size": args.vocab_size}
    model = settings.profile.model.model_copy(update={k: v for k, v in given.items() if v is not None})
    corpus = args.corpus or settings.paths.hf_splits
    with writing_output(args, [args.out], inputs=[corpus], option="--out") as stamp:
        if args.corpus:
            options = {"seed": model.seed, "fp8": args.fp8, "vocab_size": model.vocab_size, "stamp": stamp}
            summary = make_toy_checkpoint(args.out, corpus_texts_from(corpus), **options)
        else:
            prompts = pretraining_texts(corpus, settings.sft, settings.train_start_date, settings.train_end_date)
            texts = training_texts(corpus, settings.sft)
            summary = make_toy_base(args.out, texts, prompts, model, fp8=args.fp8, stamp=stamp)
    print(json.dumps(summary, indent=2))
    return 0


def _convert_fp8(args: argparse.Namespace, settings: Settings) -> int:
    from sftc_assets.checkpoints.convert import convert_fp8_checkpoint

    with writing_output(args, [args.output], inputs=[args.source]) as stamp:
        summary = convert_fp8_checkpoint(
            args.source, args.output, device=args.device, progress=not args.no_progress, stamp=stamp
        )
    print(json.dumps({k: v for k, v in summary.items() if k != "shard_sha256"}, indent=2))
    return 0


def _preflight(args: argparse.Namespace, settings: Settings) -> int:
    from sftc_assets.training.estimate import estimate_text, gpu_run_estimate
    from sftc_assets.training.preflight import run_preflight
    from sftc_platform.launchers.plan_checks import gpu_plan_launch_checks

    report = run_preflight(
        settings,
        require_gpu=settings.profile_name == "full",
        check_nemo=not args.no_nemo,
        launch_checks=gpu_plan_launch_checks,
    )
    estimate = gpu_run_estimate(settings, plan=report.plan)
    if args.json:
        print(
            json.dumps(
                {**report.as_dict(), "gpu_plan": {"estimate": estimate.as_dict() if estimate else None}}, indent=2
            )
        )
    else:
        print(
            report.table(
                "What the GPU run will cost (configs/nemo/finetune.yaml, rates in configs/cluster.yaml):\n"
                f"{estimate_text(estimate, '  ')}"
            )
        )
    return 0 if report.ready else 1
