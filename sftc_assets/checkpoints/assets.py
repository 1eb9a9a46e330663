"""The checkpoint assets: `base_checkpoint` (the FP8 model: built tiny in the toy profile, an observed external
path in the full one) and `bf16_checkpoint` (its BF16 conversion, gated by the GPU resource), with checks."""

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from sftc_assets.checkpoints import convert, pretrain, toy_model, verify
from sftc_assets.sft_data import nemo_export
from sftc_assets.sft_data.prompts import render_prompt
from sftc_core.settings import Settings
from sftc_core.text import format_bytes, format_number, markdown_table
from sftc_platform.metadata import asset_metadata, code_version, report_summary
from sftc_platform.resources import GpuResource
from sftc_platform.routing import COMPUTE_CLASSES, asset_placement, check_placement
from sftc_platform.writes import data_version, writing

GROUP = "checkpoints"
SHORT_HASH = 12
_SCAN_CHECKS = {
    "no_scale_tensors": "No `_scale_inv` tensor is left in the converted checkpoint.",
    "tensors_finite": "Every value of every floating-point tensor is finite.",
    "shapes_match_config": (
        "Every tensor a DeepSeek-V3 of config.json must have is there with its shape, and nothing else."
    ),
}


def _table(rows: list[dict]) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table([{**r, "bytes": format_bytes(r["bytes"])} for r in rows]))


def _pretraining_figures(pretrained: dict | None, settings: Settings) -> dict:
    """The pretraining as people read it: its window, steps, tokens and losses, the random model's loss beside them."""
    if pretrained is None:
        return {"pretraining": "none: random weights (profile model.pretraining is not set)"}
    return {
        "pretraining_window": f"{settings.train_start_date}..{settings.train_end_date} (the train split's prompt side)",
        # per record of the window: its rendered prompt and its prompt-side XML
        "pretraining_documents": pretrained["documents"],
        "pretraining_steps": pretrained["steps"],
        "pretraining_tokens": pretrained["tokens"],
        "pretraining_epochs": pretrained["epochs"],
        "pretraining_initial_loss": pretrained["initial_loss"],
        "pretraining_final_loss": pretrained["final_loss"],
        # A model that knows nothing spreads its bets evenly over the vocabulary: loss ln(vocab) per token.
        "random_model_loss": math.log(settings.profile.model.vocab_size),
        "pretraining_seconds": pretrained["seconds"],
    }


def materialize_base_checkpoint(context: dg.AssetExecutionContext, settings: Settings) -> dg.MaterializeResult:
    """The toy profile's base: a tiny DeepSeek-V3 built, pretrained and written in the FP8 release layout."""
    paths, model = settings.paths, settings.profile.model
    # The train split's prompts dated in the training window only: the base must not learn from a later window.
    with writing(settings, "base_checkpoint", [paths.base_checkpoint], inputs=[("hf_splits", None)]) as stamp:
        window = (settings.train_start_date, settings.train_end_date)
        prompts = pretrain.pretraining_texts(paths.hf_splits, settings.sft, *window)
        texts = nemo_export.training_texts(paths.hf_splits, settings.sft)
        summary = toy_model.make_toy_base(
            paths.base_checkpoint, texts, prompts, model, log=context.log.info, stamp=stamp
        )
    context.log.info("toy FP8 checkpoint: %s", summary)
    pretrained = summary["pretraining"]
    size = f"{format_number(summary['parameters'])} parameters in {summary['shards']} shards"
    how = "random weights"
    if pretrained:
        how = f"pretrained {pretrained['steps']} steps to loss {format_number(pretrained['final_loss'])}"
    report_summary(context, "base_checkpoint", f"{size}, {format_bytes(summary['total_bytes'])}, {how}")
    return dg.MaterializeResult(
        metadata=asset_metadata(
            settings,
            "base_checkpoint",
            {
                "path": dg.MetadataValue.path(summary["path"]),
                "parameters": summary["parameters"],
                "tensors": summary["tensors"],
                "fp8_tensors": summary["quantized_tensors"],
                "shards": summary["shards"],
                "scales_in_other_shard": summary["scales_in_other_shard"],
                "size": format_bytes(summary["total_bytes"]),
                "size_bytes": summary["total_bytes"],
                "tokenizer_vocab": summary["tokenizer_vocab"],
                "corpus_texts": summary["corpus_texts"],
                **_pretraining_figures(pretrained, settings),
                "shard_table": _table(verify.shard_table(paths.base_checkpoint)),
            },
        ),
        data_version=data_version([paths.base_checkpoint]),
    )


def observe_base_checkpoint(source: Path) -> dg.ObserveResult:
    """The full profile's external FP8 release: its layout validated from the headers, versioned by its fingerprint."""
    plan = convert.plan_conversion(source)
    version = hashlib.sha256(json.dumps(plan.fingerprint, sort_keys=True).encode()).hexdigest()[:SHORT_HASH]
    return dg.ObserveResult(
        data_version=dg.DataVersion(version),
        metadata={
            "path": dg.MetadataValue.path(str(source)),
            "shards": len(plan.fingerprint["shards"]),
            "size": format_bytes(plan.input_bytes),
            "size_bytes": plan.input_bytes,
            "fp8_tensors": plan.dequantized,
            "bf16_size": format_bytes(plan.total_size),
        },
    )


def materialize_bf16_checkpoint(
    context: dg.AssetExecutionContext, settings: Settings, gpu: GpuResource
) -> dg.MaterializeResult:
    paths, source = settings.paths, settings.base_checkpoint_dir
    with writing(settings, "bf16_checkpoint", [paths.bf16_checkpoint], inputs=[("base_checkpoint", None)]) as stamp:
        plan = convert.plan_conversion(source)  # a bad checkpoint fails here, before the gate and before any work
        cpu_limit = settings.profile.compute.cpu_max_checkpoint_bytes
        device = gpu.choose_device("bf16_checkpoint", plan.input_bytes, cpu_limit)
        summary = convert.convert_fp8_checkpoint(
            source, paths.bf16_checkpoint, device=device, stamp=stamp, progress_log=context.log.info
        )
    context.log.info("conversion: %s", {k: v for k, v in summary.items() if k != "shard_sha256"})
    sizes = f"{format_bytes(summary['input_bytes'])} -> {format_bytes(summary['output_bytes'])}"
    where = f"{summary['device']}/{summary['method']}"
    report_summary(
        context, "bf16_checkpoint", f"{summary['dequantized_tensors']} FP8 tensors dequantized, {sizes} on {where}"
    )
    shard_sha256 = summary["shard_sha256"]
    shards = verify.shard_table(paths.bf16_checkpoint)
    rows = [{**row, "sha256": shard_sha256[row["shard"]][:SHORT_HASH]} for row in shards]
    return dg.MaterializeResult(
        metadata=asset_metadata(
            settings,
            "bf16_checkpoint",
            {
                "path": dg.MetadataValue.path(str(paths.bf16_checkpoint)),
                "device": summary["device"],
                "method": summary["method"],
                "shards": summary["shards"],
                "shards_resumed": summary["shards_resumed"],
                "tensors": summary["tensors"],
                "dequantized_tensors": summary["dequantized_tensors"],
                "input_size": format_bytes(summary["input_bytes"]),
                "output_size": format_bytes(summary["output_bytes"]),
                "output_bytes": summary["output_bytes"],
                "seconds": summary["seconds"],
                "gb_per_s": summary["gb_per_s"],
                "shard_table": _table(rows),
                "gpu": gpu.probe().describe(),
            },
        ),
        data_version=data_version([paths.bf16_checkpoint]),
    )


def check_bf16_checkpoint_scan(checkpoint_dir: Path) -> Iterator[dg.AssetCheckResult]:
    """One pass over the checkpoint, one result per check of `_SCAN_CHECKS`."""
    scan = verify.scan_checkpoint(checkpoint_dir)
    common = {"tensors": scan.tensors, "dtypes": dg.MetadataValue.json(scan.dtypes)}
    scales = {"scale_tensors": len(scan.scale_tensors), "examples": dg.MetadataValue.json(scan.scale_tensors[:10])}
    yield dg.AssetCheckResult(check_name="no_scale_tensors", passed=not scan.scale_tensors, metadata=common | scales)
    nonfinite = {"nonfinite_tensors": len(scan.nonfinite), "examples": dg.MetadataValue.json(scan.nonfinite[:10])}
    yield dg.AssetCheckResult(check_name="tensors_finite", passed=not scan.nonfinite, metadata=common | nonfinite)
    yield dg.AssetCheckResult(
        check_name="shapes_match_config",
        passed=scan.shapes_ok,
        metadata={
            **common,
            "missing": dg.MetadataValue.json(scan.missing[:10]),
            "unexpected": dg.MetadataValue.json(scan.unexpected[:10]),
            "wrong_shape": dg.MetadataValue.json(scan.wrong_shape[:10]),
        },
    )


def check_loads_and_generates(checkpoint_dir: Path, settings: Settings) -> dg.AssetCheckResult:
    if settings.profile.model.kind != "toy":
        skipped = f"profile {settings.profile_name}: too big to load on the check's node"
        return dg.AssetCheckResult(passed=True, metadata={"skipped": skipped})
    # The configured template around a fixed input: the check reads no file but the checkpoint.
    prompt = render_prompt(settings.sft.prompt.instruction, "Ticker: AAPL", settings.sft)
    result = verify.load_and_generate(checkpoint_dir, prompt)
    generated = dg.MetadataValue.text(result["text"])
    return dg.AssetCheckResult(
        passed=result["new_tokens"] > 0,
        metadata={"parameters": result["parameters"], "new_tokens": result["new_tokens"], "generated": generated},
    )


def defs(settings: Settings) -> dg.Definitions:
    if settings.profile.model.kind == "toy":

        @dg.asset(
            name="base_checkpoint",
            deps=["hf_splits"],
            group_name=GROUP,
            code_version=code_version("base_checkpoint", settings, toy_model, pretrain, nemo_export),
            kinds={"pytorch", "huggingface"},
            description="The tiny DeepSeek-V3, pretrained as a causal LM on the prompt side of the training window's "
            "theses (the rendered prompts and their facts as the corpus's XML; never an answer, never a later window), "
            "in the FP8 release layout (sharded, float8_e4m3fn + _scale_inv, index, quantization_config), with a BPE "
            "tokenizer trained on the train split's prompts and targets.",
            **asset_placement("cpu", settings),
        )
        def base_checkpoint(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            return materialize_base_checkpoint(context, settings)

    else:

        @dg.observable_source_asset(
            name="base_checkpoint",
            group_name=GROUP,
            description="The DeepSeek-V3 FP8 release at profile.model.base_checkpoint_path (downloaded ahead of time); "
            "each observation validates its layout from the headers and versions it by index, shard sizes and times.",
        )
        def base_checkpoint() -> dg.ObserveResult:
            return observe_base_checkpoint(settings.base_checkpoint_dir)

    @dg.asset(
        deps=[base_checkpoint],
        group_name=GROUP,
        code_version=code_version("bf16_checkpoint", settings, convert),
        kinds={"pytorch", "huggingface"},
        description="The BF16 checkpoint converted from base_checkpoint (Triton kernel on GPU, the same math in torch "
        "on CPU), with config.json free of quantization_config, the tokenizer and the generation config.",
        **asset_placement(COMPUTE_CLASSES["bf16_checkpoint"], settings),
    )
    def bf16_checkpoint(context: dg.AssetExecutionContext, gpu: GpuResource) -> dg.MaterializeResult:
        return materialize_bf16_checkpoint(context, settings, gpu)

    scan_specs = [
        dg.AssetCheckSpec(name, asset=bf16_checkpoint, blocking=True, description=text)
        for name, text in _SCAN_CHECKS.items()
    ]

    @dg.multi_asset_check(
        specs=scan_specs,
        description="One pass over bf16_checkpoint: scale tensors, finiteness, shapes against the config.",
        **check_placement(COMPUTE_CLASSES["bf16_checkpoint"], settings),
    )
    def bf16_checkpoint_scan():
        return check_bf16_checkpoint_scan(settings.paths.bf16_checkpoint)

    @dg.asset_check(
        asset=bf16_checkpoint,
        blocking=True,
        description="Toy profile: loads with transformers' from_pretrained and generates tokens greedily "
        "(skipped in the full profile, where loading is the training stage's GPU work).",
        **check_placement(COMPUTE_CLASSES["bf16_checkpoint"], settings),
    )
    def loads_and_generates() -> dg.AssetCheckResult:
        return check_loads_and_generates(settings.paths.bf16_checkpoint, settings)

    checks = [bf16_checkpoint_scan, loads_and_generates]
    return dg.Definitions(assets=[base_checkpoint, bf16_checkpoint], asset_checks=checks)
