"""The NeMo side of the `nemo` backend, run in the NeMo environment (never in .venv):

    python -m sftc_assets.training.nemo_entry import   --hf-checkpoint BF16_DIR --output NEMO_DIR [--dry-run]
    python -m sftc_assets.training.nemo_entry finetune --hf-checkpoint BF16_DIR --nemo-checkpoint NEMO_DIR
                                                       --data NEMO_JSONL_DIR --work-dir DIR [--max-steps N] [--dry-run]
    python -m sftc_assets.training.nemo_entry export   --hf-checkpoint BF16_DIR --work-dir DIR --output SFT_DIR
                                                       [--dry-run]

Imports only the standard library, dagster_pipes, NeMo and sftc's Dagster-free config modules: NeMo 2.7.3 pins
transformers 4.57 and numpy < 2, so nothing of our environment may load here. NeMo is imported only past the
dry-run point: `--dry-run` checks the inputs and prints the planned recipe as JSON on any Python with pydantic.
Progress, metrics and the result go back to Dagster through dagster_pipes when Dagster launched the process
(on global rank 0 only under torchrun); launched by hand, the Pipes calls are no-ops.

`finetune` runs under torchrun (one process per GPU); `export` (LoRA merge + HF export) is a separate
single-process step because NeMo's merge and export build their own one-device CPU trainer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from dagster_pipes import PipesContext

from sftc_assets.training.nemo_config import (
    NemoRunPaths,
    check_nemo_checkpoint,
    check_nemo_dataset,
    model_config_from_hf,
    plan_recipe,
    read_hf_config,
)
from sftc_assets.training.pipes_entry import global_rank, open_pipes
from sftc_core.configs import load_finetune_config, with_max_steps
from sftc_core.io import atomic_dir, atomic_write_csv, atomic_write_json

log = logging.getLogger("sftc.nemo_entry")

# Written by `finetune` into its work dir for `export` (and people): where the last checkpoint is, the losses.
FINETUNE_RESULT = "finetune_result.json"
TRAINING_CSV_COLUMNS = ("step", "loss", "lr", "tokens_per_s")
VAL_CSV_COLUMNS = ("step", "val_loss")


# --- import: BF16 HF checkpoint -> NeMo checkpoint (the nemo_model asset) ------------------------


def plan_import(hf_checkpoint: Path, output: Path) -> dict:
    hf_config = read_hf_config(hf_checkpoint)
    return {
        "command": "import",
        "source": f"hf://{Path(hf_checkpoint).resolve()}",
        "output_path": str(output),
        "model_config": model_config_from_hf(hf_config, Path(hf_checkpoint) / "config.json"),
    }


def run_import(plan: dict, pipes: PipesContext) -> dict:
    from nemo.collections import llm

    started = time.monotonic()
    output = Path(plan["output_path"])
    pipes.log.info(f"importing {plan['source']} into NeMo at {output}")
    with atomic_dir(output) as staging:
        # import_ckpt refuses an existing output_path without overwrite; the staging dir exists (empty).
        llm.import_ckpt(
            model=llm.DeepSeekModel(llm.DeepSeekV3Config(**plan["model_config"])),
            source=plan["source"],
            output_path=staging,
            overwrite=True,
        )
    files = [p for p in output.rglob("*") if p.is_file()]
    summary = {
        "path": str(output),
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "num_layers": plan["model_config"]["num_layers"],
        "hidden_size": plan["model_config"]["hidden_size"],
        "num_moe_experts": plan["model_config"]["num_moe_experts"],
        "import_seconds": round(time.monotonic() - started, 1),
    }
    pipes.report_asset_materialization(metadata=summary)
    return summary


# --- finetune: the recipe on the NeMo JSONL, under torchrun -------------------------------------


def build_recipe(plan: dict):
    """`llm.deepseek_v3.finetune_recipe(...)` with the plan applied: our data, parallelism, steps and model size."""
    import nemo_run as run
    from nemo.collections import llm
    from nemo.collections.llm.gpt.data.packed_sequence import PackedSequenceSpecs

    recipe = llm.deepseek_v3.finetune_recipe(**plan["factory_kwargs"])
    # The recipe restores nemo://<hub id> from NEMO_HOME; we restore the imported checkpoint by path.
    recipe.resume.restore_config.path = plan["restore_path"]
    for key, value in {**plan["model_config"], **plan["recompute"]}.items():
        setattr(recipe.model.config, key, value)
    for key, value in plan["trainer"].items():
        setattr(recipe.trainer, key, value)
    for key, value in plan["strategy"].items():
        setattr(recipe.trainer.strategy, key, value)
    for key, value in plan["optimizer"].items():
        setattr(recipe.optim.config, key, value)
    for key, value in plan["scheduler"].items():
        setattr(recipe.optim.lr_scheduler, key, value)
    for key, value in plan["checkpoint"].items():
        setattr(recipe.log.ckpt, key, value)
    if plan["peft"] is not None:
        for key, value in plan["peft"].items():
            setattr(recipe.peft, key, value)
    # The recipe's data module is SQuAD from the hub; ours is the nemo_jsonl directory.
    recipe.data = run.Config(llm.FineTuningDataModule, **plan["data"])
    if plan["factory_kwargs"]["packed_sequence"]:
        seq_length = plan["data"]["seq_length"]
        recipe.data.dataset_kwargs = {"pad_to_max_length": True}
        recipe.data.packed_sequence_specs = run.Config(PackedSequenceSpecs, packed_sequence_size=seq_length)
    return recipe


def _metrics_callback(pipes: PipesContext, global_batch_size: int, seq_length: int, log_every: int):
    """A Lightning callback that keeps the loss rows on rank 0 and streams them to Dagster."""
    import lightning.pytorch as pl

    class PipesMetrics(pl.Callback):
        def __init__(self):
            self.train_rows: list[dict] = []
            self.val_rows: list[dict] = []
            self._last = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._last = time.monotonic()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if not trainer.is_global_zero:
                return
            metrics = trainer.callback_metrics
            seconds = time.monotonic() - self._last if self._last else None
            step = int(trainer.global_step)
            row = {
                "step": step,
                "loss": float(metrics["reduced_train_loss"]) if "reduced_train_loss" in metrics else None,
                "lr": float(metrics["lr"]) if "lr" in metrics else trainer.optimizers[0].param_groups[0]["lr"],
                # Padded tokens of one global batch per second: an upper bound on real tokens/s.
                "tokens_per_s": round(global_batch_size * seq_length / seconds, 1) if seconds else None,
            }
            self.train_rows.append(row)
            if step % log_every == 0:
                pipes.log.info(f"step {step}: loss {row['loss']}, lr {row['lr']:.3g}, {row['tokens_per_s']} tokens/s")
                pipes.report_custom_message({"kind": "train", **row})

        def on_validation_end(self, trainer, pl_module):
            if not trainer.is_global_zero or "val_loss" not in trainer.callback_metrics:
                return
            # The sanity check before the first step (2 batches) stands in for the step-0 validation loss.
            row = {
                "step": 0 if trainer.sanity_checking else int(trainer.global_step),
                "val_loss": float(trainer.callback_metrics["val_loss"]),
            }
            self.val_rows.append(row)
            pipes.log.info(f"validation at step {row['step']}: loss {row['val_loss']:.4f}")
            pipes.report_custom_message({"kind": "val", **row})

    return PipesMetrics()


def last_checkpoint(exp_dir: Path) -> Path:
    """The newest checkpoint NeMo's ModelCheckpoint wrote under <exp_dir>/checkpoints
    (a dir with weights/ and context/)."""
    candidates = [p for p in (Path(exp_dir) / "checkpoints").glob("*") if (p / "context").is_dir()]
    if not candidates:
        raise FileNotFoundError(f"{exp_dir}/checkpoints: no NeMo checkpoint written; see the training log above")
    last = [p for p in candidates if p.name.endswith("-last")]
    return (last or sorted(candidates, key=lambda p: p.stat().st_mtime))[-1].resolve()


def run_finetune(plan: dict, pipes: PipesContext) -> dict:
    import fiddle as fdl

    recipe = build_recipe(plan)
    callback = _metrics_callback(pipes, plan["data"]["global_batch_size"], plan["data"]["seq_length"], log_every=10)
    recipe.trainer.callbacks = [*(recipe.trainer.callbacks or []), callback]
    pipes.log.info(
        f"fine-tuning with {plan['factory']} on {plan['world_size']} GPUs (data-parallel {plan['data_parallel_size']})"
    )
    started = time.monotonic()
    exp_dir = fdl.build(recipe)()  # llm.finetune(...) with every argument bound; returns the experiment dir
    if global_rank() != 0:
        return {}
    work_dir = Path(plan["factory_kwargs"]["dir"])
    result = {
        "experiment_dir": str(exp_dir),
        "checkpoint": str(last_checkpoint(Path(exp_dir))),
        "peft": plan["peft"] is not None,
        "train_seconds": round(time.monotonic() - started, 1),
        "train_rows": callback.train_rows,
        "val_rows": callback.val_rows,
        "plan": plan,
    }
    atomic_write_json(work_dir / FINETUNE_RESULT, result)
    pipes.report_custom_message(
        {"kind": "finetune_done", "checkpoint": result["checkpoint"], "steps": len(callback.train_rows)}
    )
    return result


# --- export: LoRA merge + HF checkpoint with the training logs (the sft_model files) --------------


def bin_to_safetensors(hf_dir: Path) -> int:
    """NeMo's DeepSeek exporter saves pytorch_model*.bin; rewrite each shard as safetensors (HF layout),
    one at a time."""
    import torch
    from safetensors.torch import save_file

    shards = sorted(hf_dir.glob("pytorch_model*.bin"))
    weight_map = {}
    for shard in shards:
        state = torch.load(shard, map_location="cpu", weights_only=True)
        name = shard.name.replace("pytorch_model", "model").replace(".bin", ".safetensors")
        # clone: shared storage between tensors is refused by safetensors
        save_file({k: v.contiguous().clone() for k, v in state.items()}, hf_dir / name, metadata={"format": "pt"})
        weight_map.update({key: name for key in state})
        shard.unlink()
    index = hf_dir / "pytorch_model.bin.index.json"
    if index.exists():
        meta = json.loads(index.read_text())
        atomic_write_json(
            hf_dir / "model.safetensors.index.json", {"metadata": meta.get("metadata", {}), "weight_map": weight_map}
        )
        index.unlink()
    return len(shards)


def plan_export(hf_checkpoint: Path, work_dir: Path, output: Path) -> dict:
    result_path = Path(work_dir) / FINETUNE_RESULT
    if not result_path.is_file():
        raise FileNotFoundError(f"{result_path}: missing; run `nemo_entry finetune --work-dir {work_dir}` first")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    read_hf_config(hf_checkpoint)
    return {
        "command": "export",
        "checkpoint": result["checkpoint"],
        "merge_lora": result["peft"],
        "merged_path": str(Path(work_dir) / "merged"),
        "output_path": str(output),
        "target_model_name": str(Path(hf_checkpoint).resolve()),
        "finetune_result": str(result_path),
    }


def summarize(result: dict) -> dict:
    """metrics.json of the nemo backend: the same loss figures as the hf backend's."""
    val = [r for r in result["val_rows"] if r.get("val_loss") is not None]
    train = [r for r in result["train_rows"] if r.get("loss") is not None]
    rates = [r["tokens_per_s"] for r in result["train_rows"] if r.get("tokens_per_s")]
    best = min(val, key=lambda r: r["val_loss"]) if val else None
    return {
        "backend": "nemo",
        "steps": max((r["step"] for r in result["train_rows"]), default=0),
        "peft": "lora" if result["peft"] else "none",
        "initial_val_loss": val[0]["val_loss"] if val else None,
        "final_val_loss": val[-1]["val_loss"] if val else None,
        "best_val_loss": best["val_loss"] if best else None,
        "best_val_step": best["step"] if best else None,
        "final_train_loss": train[-1]["loss"] if train else None,
        "train_seconds": result["train_seconds"],
        "tokens_per_s": round(sum(rates) / len(rates), 1) if rates else None,
        "world_size": result["plan"]["world_size"],
    }


def run_export(plan: dict, pipes: PipesContext) -> dict:
    from nemo.collections import llm

    result = json.loads(Path(plan["finetune_result"]).read_text(encoding="utf-8"))
    checkpoint = plan["checkpoint"]
    if plan["merge_lora"]:
        pipes.log.info(f"merging LoRA adapters of {checkpoint}")
        with atomic_dir(plan["merged_path"]) as merged:
            llm.peft.merge_lora(lora_checkpoint_path=checkpoint, output_path=str(merged))
        checkpoint = plan["merged_path"]
    output = Path(plan["output_path"])
    with atomic_dir(output) as staging:
        pipes.log.info(f"exporting {checkpoint} to a Hugging Face checkpoint")
        # DeepSeek's exporter builds the HF model from target_model_name's config.json: our BF16 checkpoint.
        llm.export_ckpt(
            path=Path(checkpoint),
            target="hf",
            output_path=staging,
            overwrite=True,
            target_model_name=plan["target_model_name"],
        )
        bin_to_safetensors(staging)
        atomic_write_csv(staging / "training.csv", result["train_rows"], TRAINING_CSV_COLUMNS)
        atomic_write_csv(staging / "val.csv", result["val_rows"], VAL_CSV_COLUMNS)
        metrics = summarize(result)
        atomic_write_json(staging / "metrics.json", metrics)  # last: its presence marks a finished run
    pipes.report_custom_message({"kind": "metrics", **metrics})
    return metrics


# --- the command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sftc_assets.training.nemo_entry", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    imp = sub.add_parser("import", help="BF16 HF checkpoint -> NeMo checkpoint (llm.import_ckpt)")
    imp.add_argument("--hf-checkpoint", type=Path, required=True)
    imp.add_argument("--output", type=Path, required=True)

    fit = sub.add_parser("finetune", help="the deepseek_v3 fine-tune recipe on the NeMo JSONL (run under torchrun)")
    fit.add_argument("--config", type=Path, help="configs/nemo/finetune.yaml (default)")
    fit.add_argument(
        "--hf-checkpoint", type=Path, required=True, help="the BF16 checkpoint the NeMo one came from (architecture)"
    )
    fit.add_argument("--nemo-checkpoint", type=Path, required=True)
    fit.add_argument("--data", type=Path, required=True, help="directory with training/validation/test.jsonl")
    fit.add_argument("--work-dir", type=Path, required=True, help="NeMo's logs and checkpoints")
    fit.add_argument("--output", type=Path, help="where export will write the HF checkpoint (recorded in the plan)")
    fit.add_argument("--max-steps", type=int, help="override max_steps (e.g. 10 for a smoke test)")

    exp = sub.add_parser("export", help="merge LoRA (if any) and export the fine-tuned checkpoint to HF")
    exp.add_argument("--hf-checkpoint", type=Path, required=True)
    exp.add_argument("--work-dir", type=Path, required=True)
    exp.add_argument("--output", type=Path, required=True)

    for p in (imp, fit, exp):
        p.add_argument(
            "--dry-run", action="store_true", help="check the inputs and print the plan as JSON; NeMo is not imported"
        )
    return parser


def make_plan(args: argparse.Namespace) -> dict:
    if args.command == "import":
        return plan_import(args.hf_checkpoint, args.output)
    if args.command == "export":
        return plan_export(args.hf_checkpoint, args.work_dir, args.output)
    config = load_finetune_config(args.config)
    if args.max_steps is not None:
        config = with_max_steps(config, args.max_steps)
    check_nemo_checkpoint(args.nemo_checkpoint)
    counts = check_nemo_dataset(args.data)
    paths = NemoRunPaths(
        hf_checkpoint=args.hf_checkpoint,
        nemo_checkpoint=args.nemo_checkpoint,
        dataset_root=args.data,
        output_dir=args.output or args.work_dir / "hf",
        work_dir=args.work_dir,
    )
    return {"command": "finetune", **plan_recipe(config, paths), "examples": counts}


RUNNERS = {"import": run_import, "finetune": run_finetune, "export": run_export}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # No hub downloads, ever: every model and tokenizer comes from a local directory.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        with open_pipes() as pipes:
            plan = make_plan(args)
            if args.dry_run:
                print(json.dumps(plan, indent=2, sort_keys=True))
                pipes.log.info(f"dry run of {args.command}: inputs valid, nothing written")
                pipes.report_custom_message({"kind": "plan", "plan": plan})
                return 0
            # NeMo prints progress (rich consoles) to stdout; our stdout carries the result JSON only.
            with contextlib.redirect_stdout(sys.stderr):
                result = RUNNERS[args.command](plan, pipes)
            if global_rank() == 0:
                print(json.dumps(result, indent=2, sort_keys=True, default=str))
            return 0
    except (ValueError, FileNotFoundError) as exc:  # ConfigError is a ValueError: a clear message, no traceback
        print(f"nemo_entry {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
