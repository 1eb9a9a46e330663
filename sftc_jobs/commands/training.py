"""`sftc train`: fine-tune the BF16 checkpoint on the NeMo JSONL pairs (the `sft_model` asset's logic).

On this node in one process by default (the profile's `launch:` says local, 1 x 1); with `--launcher local|slurm|k8s`,
`--nodes N` or `--procs-per-node P` (or a profile that says so) the fine-tune is launched as a job whose every node
runs the same entry under torchrun, as the asset launches it (sftc_platform/launchers/). `--dry-run` prints the
plan: the sbatch script, the JobSet manifest or the local command, and each node's torchrun command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sftc_core.artifacts import Stamp
from sftc_core.configs import load_sft_config, profile_path
from sftc_core.settings import Settings
from sftc_jobs.commands.outputs import add_force, writing_output


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help=(
            "fine-tune the model (Hugging Face backend on CPU/GPU, NeMo backend on GPU nodes), "
            "here or as a multi-node job"
        ),
        description=(
            "Fine-tune the BF16 checkpoint on the NeMo JSONL pairs. Hyperparameters come from the profile's "
            "`training:` section, the job's shape and launcher from its `launch:` section (configs/cluster.yaml says "
            "where Slurm or Kubernetes is); TRAIN_BACKEND picks the default backend."
        ),
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="SFT config (special tokens, max_seq_length; default: configs/sft_config.yaml)",
    )
    parser.add_argument("--output", type=Path, metavar="DIR", help="output directory (default: <data dir>/models/sft)")
    parser.add_argument(
        "--backend", choices=("hf", "nemo"), help="training backend (default: TRAIN_BACKEND, else the profile's)"
    )
    parser.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help="BF16 HF checkpoint to start from (default: <data dir>/checkpoints/bf16)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="directory with training.jsonl and validation.jsonl (default: <data dir>/nemo_jsonl)",
    )
    parser.add_argument("--max-steps", type=int, metavar="N", help="override the profile's training.max_steps")
    parser.add_argument(
        "--smoke-test", action="store_true", help="10 steps on a few samples: proves the path on a new node"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="in one process here: continue the interrupted run (.OUTPUT.partial), else from "
        "OUTPUT's latest checkpoint (a launched job always resumes an interrupted run of the same settings and inputs)",
    )
    parser.add_argument("--device", default="auto", help="hf backend: auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument(
        "--launcher",
        choices=("local", "slurm", "k8s"),
        help="how the job starts (default: the profile's launch.launcher)",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        metavar="N",
        help="nodes of the job (default: the profile's; nemo: configs/nemo/finetune.yaml)",
    )
    parser.add_argument(
        "--procs-per-node", type=int, metavar="P", help="torchrun processes per node (nemo: GPUs per node)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the launch plan (sbatch script, JobSet manifest, per-node command) and, for the "
        "NeMo backend, what the run will cost (GPU-hours, wall-clock hours, money per phase); start nothing",
    )
    parser.add_argument(
        "--lora-rehearsal",
        action="store_true",
        help="run the profile's lora_rehearsal instead (the GPU recipe's LoRA for a few steps on --model and --data, "
        "in a temporary directory, as sft_model's check lora_recipe_rehearsed does): its figures as JSON, exit 1 when "
        "it finds a problem; --max-steps overrides its steps",
    )
    add_force(parser)
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    for flag, value in (
        ("--max-steps", args.max_steps),
        ("--nodes", args.nodes),
        ("--procs-per-node", args.procs_per_node),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: must be at least 1")
    if args.config:
        settings = settings.model_copy(update={"sft": load_sft_config(args.config)})
    paths = settings.paths
    output = args.output or paths.sft_model
    model = args.model or paths.bf16_checkpoint
    data = args.data or paths.nemo_jsonl
    if args.lora_rehearsal:
        return _rehearse_lora(args, settings, model, data)
    # A failed launch (the job's state and log) ends in the command line's one-line error, exit 2.
    with writing_output(args, [output], inputs=[model, data]) as stamp:
        if (args.backend or settings.train_backend) == "nemo":
            return _train_nemo(args, settings, model, data, output, stamp)
        shape = settings.profile.launch
        launcher = args.launcher or shape.launcher
        nodes, procs = args.nodes or shape.nodes, args.procs_per_node or shape.procs_per_node
        # no launcher asked for and one process on this node: run it here, in this process
        if args.launcher is None and launcher == "local" and nodes * procs == 1 and not args.dry_run:
            return _train_here(args, settings, model, data, output, stamp)
        return _launch_hf(args, settings, model, data, output, launcher, nodes, procs, stamp)


def _train_here(
    args: argparse.Namespace, settings: Settings, model: Path, data: Path, output: Path, stamp: Stamp
) -> int:
    import logging

    from sftc_assets.training.hf_backend import (  # torch and transformers load only for training
        run_training,
        training_progress,
    )

    with training_progress(logging.getLogger("sftc.training").info) as progress:
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
            on_step=progress,
        )
    print(json.dumps({"output": str(result.output_dir), **result.metrics}, indent=2))
    return 0


# What a rehearsal does not take: it runs here, writes nothing and is the Hugging Face backend's.
NOT_WITH_REHEARSAL = ("output", "backend", "smoke_test", "resume", "launcher", "nodes", "procs_per_node", "dry_run")


def _rehearse_lora(args: argparse.Namespace, settings: Settings, model: Path, data: Path) -> int:
    import logging

    from sftc_assets.training.lora_rehearsal import rehearsal_problems, rehearse_lora

    where = profile_path(settings.profile_name, settings.config_dir)
    given = [f"--{name.replace('_', '-')}" for name in NOT_WITH_REHEARSAL if getattr(args, name)]
    if given:
        raise ValueError(f"--lora-rehearsal runs here and writes nothing: it does not take {', '.join(given)}")
    rehearsal = settings.profile.lora_rehearsal
    if rehearsal is None:
        raise ValueError(f"{where}: no lora_rehearsal section (the profile's fine-tune is the recipe's run itself)")
    if args.max_steps is not None:
        warmup = min(rehearsal.warmup_steps, args.max_steps - 1)
        rehearsal = rehearsal.model_copy(update={"max_steps": args.max_steps, "warmup_steps": warmup})
    profile, log = settings.profile, logging.getLogger("sftc.training").info
    figures = rehearse_lora(model, data, profile.training, rehearsal, settings.sft, profile.evaluation, log)
    problems = rehearsal_problems(figures, rehearsal, str(where))
    print(json.dumps({**figures, "problems": problems}, indent=2))
    return 1 if problems else 0


def _launch_hf(
    args, settings: Settings, model: Path, data: Path, output: Path, launcher: str, nodes: int, procs: int, stamp: Stamp
) -> int:
    """The fine-tune as a job: every rank trains beside OUTPUT (resuming there), rank 0 swaps the finished run in."""
    from sftc_assets.training import hf_launch
    from sftc_platform.launchers import jobs
    from sftc_platform.launchers.plan import Launch

    launch = Launch.from_settings(settings, launcher)
    gpus = settings.profile.launch.gpus_per_node if args.device != "cpu" else 0
    step = hf_launch.training_step(
        model,
        data,
        output,
        settings.profile.training,
        settings.sft,
        settings.profile.evaluation,
        nodes=nodes,
        procs_per_node=procs,
        gpus_per_node=gpus,
        max_steps=args.max_steps,
        smoke_test=args.smoke_test,
        device=args.device,
        stamp=stamp,
        write=not args.dry_run,
    )
    if args.dry_run:
        print(jobs.plan_text([step], launch))
        print("# the cost estimate is the NeMo backend's GPU run: sftc train --backend nemo --dry-run")
        return 0
    outcome = jobs.run(step, launch)
    metrics = hf_launch.finished_metrics(output)
    job = {"job_id": outcome.job_id, "job_log": str(outcome.log_path), **outcome.pending()}
    print(json.dumps({"output": str(output), **job, **metrics}, indent=2))
    return 0


def _train_nemo(
    args: argparse.Namespace, settings: Settings, model: Path, data: Path, output: Path, stamp: Stamp
) -> int:
    """The NeMo backend: fine-tune on every node, then merge and export, in NeMo's own environment."""
    from sftc_assets.training import nemo_runner
    from sftc_platform.launchers import jobs
    from sftc_platform.launchers.plan import Launch

    config = nemo_runner.run_config(settings.finetune, args.max_steps, args.smoke_test, args.nodes, args.procs_per_node)
    launch = Launch.from_settings(settings, args.launcher)
    steps = nemo_runner.planned_steps(config, model, settings.paths.nemo_model, data, output)
    if args.dry_run:
        from sftc_assets.training.estimate import estimate_text, gpu_run_estimate

        print(jobs.plan_text(steps, launch))
        print(
            "# --- what this GPU run will cost (the rates: configs/cluster.yaml, estimate:) ---\n"
            f"{estimate_text(gpu_run_estimate(settings, config), '# ')}"
        )
        return 0
    jobs.refuse_unlaunchable(steps, launch)
    if launch.launcher == "local":
        nemo_runner.require_interpreter(settings.nemo_python)

    def execute(step):
        return jobs.run_for_result(step, launch)

    metrics = nemo_runner.nemo_finetune(execute, config, model, settings.paths.nemo_model, data, output, stamp=stamp)
    print(json.dumps({"output": str(output), **metrics}, indent=2))
    return 0
