"""The checkpoint assets: `base_checkpoint` (the FP8 model: built tiny in the toy profile, an observed external
path in the full one) and `bf16_checkpoint` (its BF16 conversion, gated by the GPU resource), with checks."""

import hashlib
import json

import dagster as dg

from sftc_assets.checkpoints import convert, fp8, preflight, safetensors_io, toy_model, verify
from sftc_assets.common.asset_helpers import code_version, manifest_metadata, markdown_table
from sftc_assets.common.io import read_jsonl
from sftc_assets.datasets.nemo_export import NEMO_FILES
from sftc_resources.gpu import format_bytes
from sftc_resources.resources import GpuResource
from sftc_resources.resources import ProjectResource
from sftc_resources.routing import asset_placement
from sftc_resources.settings import load_settings

_SETTINGS = load_settings()
_PROFILE = _SETTINGS.profile_name
_BF16_PLACEMENT = asset_placement("auto", _PROFILE)
SHORT_HASH = 12


def _table(rows: list[dict]) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table([{**r, "bytes": format_bytes(r["bytes"])} for r in rows]))


if _SETTINGS.profile.model.kind == "toy":

    @dg.asset(
        deps=["nemo_jsonl"],
        code_version=code_version(toy_model, fp8, safetensors_io),
        kinds={"pytorch", "huggingface"},
        description="The tiny DeepSeek-V3 in the FP8 release layout (sharded, float8_e4m3fn + _scale_inv, index, "
        "quantization_config), with a BPE tokenizer trained on nemo_jsonl's training lines.",
        **asset_placement("cpu", _PROFILE),
    )
    def base_checkpoint(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        settings, paths = project.settings(), project.paths()
        # Training lines only: the tokenizer must not learn from the test window.
        texts = toy_model.corpus_texts_from(paths.nemo_jsonl / NEMO_FILES["train"])
        summary = toy_model.make_toy_checkpoint(
            paths.base_checkpoint, texts, seed=settings.profile.model.seed, fp8=True, vocab_size=settings.profile.model.vocab_size
        )
        context.log.info("toy FP8 checkpoint: %s", summary)
        return dg.MaterializeResult(
            metadata={
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
                "shard_table": _table(verify.shard_table(paths.base_checkpoint)),
                **manifest_metadata(),
            }
        )

else:

    @dg.observable_source_asset(
        name="base_checkpoint",
        description="The DeepSeek-V3 FP8 release at profile.model.base_checkpoint_path (downloaded ahead of time); "
        "each observation validates its layout from the headers and versions it by index, shard sizes and times.",
    )
    def base_checkpoint(context, project: ProjectResource) -> dg.ObserveResult:
        source = preflight.base_checkpoint_dir(project.settings())
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


@dg.asset(
    deps=[base_checkpoint],
    # kernel.py is not hashed: it needs triton to import, and its output is pinned bit-identical to fp8.py's math.
    code_version=code_version(convert, fp8, safetensors_io),
    kinds={"pytorch", "huggingface"},
    description="The BF16 checkpoint converted from base_checkpoint (Triton kernel on GPU, the same math in torch on "
    "CPU), with config.json free of quantization_config, the tokenizer and the generation config.",
    **_BF16_PLACEMENT,
)
def bf16_checkpoint(context: dg.AssetExecutionContext, project: ProjectResource, gpu: GpuResource) -> dg.MaterializeResult:
    settings, paths = project.settings(), project.paths()
    source = preflight.base_checkpoint_dir(settings)
    plan = convert.plan_conversion(source)  # a bad checkpoint fails here, before the gate and before any work
    device = gpu.choose_device("bf16_checkpoint", plan.input_bytes, settings.profile.compute.cpu_max_checkpoint_bytes)
    summary = convert.convert_fp8_checkpoint(source, paths.bf16_checkpoint, device=device)
    context.log.info("conversion: %s", {k: v for k, v in summary.items() if k != "shard_sha256"})
    rows = [{**row, "sha256": summary["shard_sha256"][row["shard"]][:SHORT_HASH]} for row in verify.shard_table(paths.bf16_checkpoint)]
    return dg.MaterializeResult(
        metadata={
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
            **manifest_metadata(),
        }
    )


_SCAN_CHECKS = {
    "no_scale_tensors": "No `_scale_inv` tensor is left in the converted checkpoint.",
    "tensors_finite": "Every value of every floating-point tensor is finite.",
    "shapes_match_config": "Every tensor a DeepSeek-V3 of config.json must have is there with its shape, and nothing else.",
}


@dg.multi_asset_check(
    specs=[dg.AssetCheckSpec(name, asset=bf16_checkpoint, blocking=True, description=text) for name, text in _SCAN_CHECKS.items()],
    description="One pass over bf16_checkpoint: scale tensors, finiteness, shapes against the config.",
    op_tags=_BF16_PLACEMENT["op_tags"],
    pool=_BF16_PLACEMENT["pool"],
)
def bf16_checkpoint_scan(project: ProjectResource):
    scan = verify.scan_checkpoint(project.paths().bf16_checkpoint)
    common = {"tensors": scan.tensors, "dtypes": dg.MetadataValue.json(scan.dtypes)}
    yield dg.AssetCheckResult(
        check_name="no_scale_tensors",
        passed=not scan.scale_tensors,
        metadata={**common, "scale_tensors": len(scan.scale_tensors), "examples": dg.MetadataValue.json(scan.scale_tensors[:10])},
    )
    yield dg.AssetCheckResult(
        check_name="tensors_finite",
        passed=not scan.nonfinite,
        metadata={**common, "nonfinite_tensors": len(scan.nonfinite), "examples": dg.MetadataValue.json(scan.nonfinite[:10])},
    )
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


@dg.asset_check(
    asset=bf16_checkpoint,
    blocking=True,
    description="Toy profile: loads with transformers' from_pretrained and generates tokens greedily "
    "(skipped in the full profile, where loading is the training stage's GPU work).",
    **_BF16_PLACEMENT,
)
def loads_and_generates(project: ProjectResource) -> dg.AssetCheckResult:
    settings, paths = project.settings(), project.paths()
    if settings.profile.model.kind != "toy":
        return dg.AssetCheckResult(passed=True, metadata={"skipped": f"profile {settings.profile_name}: too big to load on the check's node"})
    train_file = paths.nemo_jsonl / NEMO_FILES["train"]
    prompt = read_jsonl(train_file)[0]["input"] if train_file.is_file() else "Ticker: AAPL"
    result = verify.load_and_generate(paths.bf16_checkpoint, prompt)
    return dg.AssetCheckResult(
        passed=result["new_tokens"] > 0,
        metadata={"parameters": result["parameters"], "new_tokens": result["new_tokens"], "generated": dg.MetadataValue.text(result["text"])},
    )


@dg.asset_check(
    asset=bf16_checkpoint,
    description="`sftc preflight` on the node: GPUs and memory against configs/nemo/finetune.yaml, Triton FP8, disk, "
    "NeMo importable (GPU items required in the full profile only). A warning, not a block: the GPU gate blocks.",
    **_BF16_PLACEMENT,
)
def gpu_preflight(project: ProjectResource) -> dg.AssetCheckResult:
    settings = project.settings()
    report = preflight.run_preflight(settings, require_gpu=settings.profile_name == "full", check_nemo=settings.train_backend == "nemo")
    return dg.AssetCheckResult(
        passed=report.ready,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "ready": report.ready,
            "checklist": dg.MetadataValue.md(markdown_table(report.as_dict()["items"], max_cell=160)),
            "report": dg.MetadataValue.json(report.as_dict()),
        },
    )
