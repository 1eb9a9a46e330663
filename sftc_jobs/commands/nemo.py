"""`sftc import-nemo`: the BF16 checkpoint into NeMo (the `nemo_model` asset's logic), in the NeMo environment."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sftc_core.configs import load_finetune_config
from sftc_core.settings import Settings
from sftc_jobs.commands.outputs import add_force, writing_output


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import-nemo",
        help="import the BF16 HF checkpoint into NeMo (llm.import_ckpt, run with the NeMo environment's interpreter)",
        description=(
            "Run `nemo_entry import` with the NeMo interpreter (SFTC_NEMO_PYTHON, else nemo_python in "
            "configs/nemo/finetune.yaml). --dry-run checks the checkpoint and prints the plan without NeMo."
        ),
    )
    parser.add_argument("--model", type=Path, help="BF16 HF checkpoint (default: <data dir>/checkpoints/bf16)")
    parser.add_argument("--output", type=Path, help="NeMo checkpoint directory (default: <data dir>/checkpoints/nemo)")
    parser.add_argument(
        "--config", type=Path, help="NeMo fine-tune config, for nemo_python (default: configs/nemo/finetune.yaml)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check the inputs and print the plan; NeMo is not imported"
    )
    add_force(parser)
    parser.set_defaults(func=run_import_nemo)


def run_import_nemo(args: argparse.Namespace, settings: Settings) -> int:
    """The import as a one-process job of the profile's launcher (a dry run checks the inputs here)."""
    from sftc_assets.training.nemo_runner import import_step, require_interpreter
    from sftc_platform.launchers.jobs import run_for_result
    from sftc_platform.launchers.plan import Launch

    if args.config:
        settings = settings.model_copy(update={"finetune": load_finetune_config(args.config)})
    paths = settings.paths
    model, output = args.model or paths.bf16_checkpoint, args.output or paths.nemo_model
    launch = Launch.from_settings(settings)
    if launch.launcher == "local" or args.dry_run:
        require_interpreter(settings.nemo_python)
    # A launch that fails (the job's state, its log) ends in the command line's one-line error.
    with writing_output(args, [output], inputs=[model]) as stamp:
        result = run_for_result(import_step(model, output, args.dry_run), launch)
        if not args.dry_run:
            stamp(output, output)  # the NeMo process wrote it (atomically); marked once it is there
    print(json.dumps(result if result is not None else {"output": str(output)}, indent=2))
    return 0
