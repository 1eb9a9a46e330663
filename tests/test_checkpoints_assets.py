"""base_checkpoint and bf16_checkpoint materialized through a Dagster instance, their checks, the GPU gate,
and the full profile's observed external checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
import torch
from checkpoints_helpers import awkward_checkpoint, write_checkpoint
from datasets import Dataset, DatasetDict
from safetensors.torch import load_file
from stage_helpers import mark_as_written, settings_with, stage_definitions

from sftc_assets.checkpoints import assets
from sftc_assets.checkpoints.toy_model import make_toy_checkpoint
from sftc_assets.checkpoints.verify import scan_checkpoint
from sftc_assets.training import assets as training_assets
from sftc_core.settings import load_settings
from sftc_platform.resources import GpuResource

LINES = [
    {
        "input": f"### Instruction:\nYou are an equity analyst.\n\n### Input:\nTicker: {t}\n"
        f"Facts:\n- close {d} {p}% over 5 days\n\n### Response:\n",
        "output": f"<reasoning>The trend is {d}.</reasoning><support>close {d} {p}%</support><action>{a}</action>",
    }
    for t, d, p, a in [("AAPL", "up", 3.1, "BUY"), ("IBM", "down", 4.2, "SELL"), ("MSFT", "flat", 0.1, "HOLD")] * 6
]


# The toy profile's pretraining cut to seconds: the asset's path and metadata (its learning: test_checkpoints_pretrain).
SHORT_PRETRAINING = {"steps": 12, "batch_size": 2, "sequence_length": 32, "learning_rate": 1e-2, "warmup_steps": 2}


def _write_hf_splits(data_dir: Path) -> None:
    """The splits base_checkpoint builds its tokenizer and pretrains on (the train split), as hf_splits saves them."""
    facts = {"ticker": "AAPL", "horizon_days": 5, "support": ["close up"], "instruction": "You are an equity analyst."}
    rows = [
        {**facts, "id": f"t{i}", "as_of_date": f"2010-02-{i + 1:02d}", "input": line["input"], "output": line["output"]}
        for i, line in enumerate(LINES)
    ]
    splits = {"train": rows[:12], "validation": rows[12:15], "test": rows[15:]}
    DatasetDict({name: Dataset.from_list(part) for name, part in splits.items()}).save_to_disk(
        str(data_dir / "hf_splits")
    )
    mark_as_written("hf_splits", data_dir / "hf_splits")


def test_toy_chain_materializes_with_every_check_passing(data_dir):
    _write_hf_splits(data_dir)
    short = settings_with().profile.model.pretraining.model_copy(update=SHORT_PRETRAINING)
    settings = settings_with(model={"pretraining": short})
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            # gpu_preflight lives with the training stage
            [*stage_definitions(assets.defs, settings), *stage_definitions(training_assets.defs, settings)],
            instance=instance,
            resources={"gpu": GpuResource(), "pipes_subprocess_client": dg.PipesSubprocessClient()},
            selection=["base_checkpoint", "bf16_checkpoint"],
        )
        assert result.success
        events = {
            e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()
        }
        base, bf16 = events["base_checkpoint"], events["bf16_checkpoint"]
        assert base["shards"].value >= 3 and base["scales_in_other_shard"].value >= 1
        keys = ("steps", "documents", "tokens", "initial_loss", "final_loss")
        pretrained = {key: base[f"pretraining_{key}"].value for key in keys}
        assert (pretrained["steps"], pretrained["documents"], pretrained["tokens"]) == (12, 2 * 12, 12 * 2 * 32)
        assert base["pretraining_window"].value == "2010-01-01..2012-04-30 (the train split's prompt side)"
        assert pretrained["final_loss"] < pretrained["initial_loss"] <= 1.05 * base["random_model_loss"].value
        assert base["fp8_tensors"].value == bf16["dequantized_tensors"].value > 0
        assert bf16["device"].value == "cpu" and bf16["method"].value == "torch" and bf16["shards_resumed"].value == 0
        assert "sha256" in bf16["shard_table"].value and "git_commit" in bf16
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert set(checks) == {
            "no_scale_tensors",
            "tensors_finite",
            "shapes_match_config",
            "loads_and_generates",
            "gpu_preflight",
        }
        assert all(c.passed for c in checks.values()), {n: c.metadata for n, c in checks.items() if not c.passed}
        assert checks["loads_and_generates"].metadata["new_tokens"].value > 0
    bf16_dir = data_dir / "checkpoints" / "bf16"
    assert (bf16_dir / "tokenizer.json").read_bytes() == (
        data_dir / "checkpoints" / "base_fp8" / "tokenizer.json"
    ).read_bytes()
    assert "quantization_config" not in json.loads((bf16_dir / "config.json").read_text())
    assert not any(
        name.endswith("_scale_inv")
        for name in json.loads((bf16_dir / "model.safetensors.index.json").read_text())["weight_map"]
    )


def test_gpu_gate_refuses_a_checkpoint_over_the_cpu_limit_before_any_work(data_dir):
    make_toy_checkpoint(data_dir / "checkpoints" / "base_fp8", [line["input"] for line in LINES], fp8=True)
    mark_as_written("base_checkpoint", data_dir / "checkpoints" / "base_fp8")
    with dg.instance_for_test() as instance:
        # The toy settings with a CPU limit below the toy checkpoint's size: the gate must refuse.
        small_cpu_limit = settings_with(compute={"cpu_max_checkpoint_bytes": 1000})
        result = dg.materialize(
            stage_definitions(assets.defs, small_cpu_limit),
            instance=instance,
            resources={"gpu": GpuResource()},
            selection=["bf16_checkpoint"],
            raise_on_error=False,
        )
    if torch.cuda.is_available():
        pytest.skip("this node has CUDA: the gate lets the conversion through")
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert "bf16_checkpoint needs a CUDA GPU" in failure.description and "1000 B" in failure.description
    assert not (data_dir / "checkpoints" / "bf16").exists()
    assert not (data_dir / "checkpoints" / ".bf16.partial").exists()


def _broken_checkpoint(good: Path, out: Path) -> Path:
    """`good` with one of each fault: a scale tensor left, a NaN, a wrong shape, a missing and an unexpected expert."""
    tensors = load_file(good / "model.safetensors")
    config = json.loads((good / "config.json").read_text())
    tensors["model.layers.1.self_attn.o_proj.weight_scale_inv"] = torch.ones(1, 1)
    tensors["model.norm.weight"][3] = float("nan")
    tensors["model.layers.2.self_attn.o_proj.weight"] = tensors["model.layers.2.self_attn.o_proj.weight"][
        :, :10
    ].contiguous()
    del tensors["model.layers.1.mlp.experts.2.up_proj.weight"]
    tensors["model.layers.1.mlp.experts.9.up_proj.weight"] = torch.zeros(2, 2, dtype=torch.bfloat16)
    return write_checkpoint(out, [tensors], config=config)


def test_scan_finds_scales_nonfinite_values_and_shapes_against_the_config(tmp_path):
    good = tmp_path / "good"
    make_toy_checkpoint(good, [line["input"] for line in LINES], fp8=False)
    broken = _broken_checkpoint(good, tmp_path / "broken")
    scan = scan_checkpoint(broken)
    assert scan.scale_tensors == ["model.layers.1.self_attn.o_proj.weight_scale_inv"]
    assert scan.nonfinite == ["model.norm.weight (model-00001-of-00001.safetensors): 1 non-finite of 64"]
    assert scan.missing == ["model.layers.1.mlp.experts.2.up_proj.weight"]
    assert scan.unexpected == ["model.layers.1.mlp.experts.9.up_proj.weight"]
    assert scan.wrong_shape == ["model.layers.2.self_attn.o_proj.weight: [64, 10], config says [64, 64]"]
    assert not scan.shapes_ok
    assert scan_checkpoint(good).shapes_ok


SCAN_CHECKS = ("no_scale_tensors", "tensors_finite", "shapes_match_config")  # bf16_checkpoint_scan's, in its order


def _scan_results(checkpoint: Path) -> dict[str, dg.AssetCheckResult]:
    return {result.check_name: result for result in assets.check_bf16_checkpoint_scan(checkpoint)}


def _values(result: dg.AssetCheckResult) -> dict:
    return {key: getattr(value, "value", value) for key, value in result.metadata.items()}


def test_scan_checks_pass_on_a_sound_checkpoint_and_count_its_tensors(tmp_path):
    built = make_toy_checkpoint(tmp_path / "good", [line["input"] for line in LINES], fp8=False)
    results = _scan_results(tmp_path / "good")
    assert list(results) == list(SCAN_CHECKS)
    assert all(result.passed for result in results.values())
    metadata = {name: _values(result) for name, result in results.items()}
    assert {m["tensors"] for m in metadata.values()} == {built["tensors"]}
    assert sum(metadata["no_scale_tensors"]["dtypes"].values()) == built["tensors"]
    assert (metadata["no_scale_tensors"]["scale_tensors"], metadata["tensors_finite"]["nonfinite_tensors"]) == (0, 0)
    shapes = metadata["shapes_match_config"]
    assert (shapes["missing"], shapes["unexpected"], shapes["wrong_shape"]) == ([], [], [])


def test_scan_checks_fail_naming_the_tensors_at_fault(tmp_path):
    make_toy_checkpoint(tmp_path / "good", [line["input"] for line in LINES], fp8=False)
    results = _scan_results(_broken_checkpoint(tmp_path / "good", tmp_path / "broken"))
    assert not any(result.passed for result in results.values())
    scales, finite, shapes = (_values(results[name]) for name in SCAN_CHECKS)
    assert scales["scale_tensors"] == 1 and scales["examples"] == ["model.layers.1.self_attn.o_proj.weight_scale_inv"]
    assert finite["nonfinite_tensors"] == 1
    assert finite["examples"] == ["model.norm.weight (model-00001-of-00001.safetensors): 1 non-finite of 64"]
    assert shapes["missing"] == ["model.layers.1.mlp.experts.2.up_proj.weight"]
    assert shapes["unexpected"] == ["model.layers.1.mlp.experts.9.up_proj.weight"]
    assert shapes["wrong_shape"] == ["model.layers.2.self_attn.o_proj.weight: [64, 10], config says [64, 64]"]


def test_scan_check_fails_on_the_unconverted_fp8_base(tmp_path):
    built = make_toy_checkpoint(tmp_path / "fp8", [line["input"] for line in LINES], fp8=True)
    results = _scan_results(tmp_path / "fp8")
    assert not results["no_scale_tensors"].passed
    assert _values(results["no_scale_tensors"])["scale_tensors"] == built["quantized_tensors"] > 0
    assert results["tensors_finite"].passed and results["shapes_match_config"].passed


def test_loads_and_generates_reports_the_loaded_model(tmp_path, data_dir):
    built = make_toy_checkpoint(tmp_path / "bf16", [line["input"] for line in LINES], fp8=False)
    result = assets.check_loads_and_generates(tmp_path / "bf16", settings_with())
    assert result.passed
    metadata = _values(result)
    assert 0 < metadata["new_tokens"] <= 16 and isinstance(metadata["generated"], str)
    # transformers holds the routing bias as a buffer, not a parameter (the MTP layer is out of both counts)
    biases = [
        t
        for name, t in load_file(tmp_path / "bf16" / "model.safetensors").items()
        if name.endswith("e_score_correction_bias") and not name.startswith("model.layers.3.")
    ]
    assert metadata["parameters"] == built["parameters"] - sum(t.numel() for t in biases)


def test_loads_and_generates_fails_on_a_checkpoint_without_weights(tmp_path, data_dir):
    make_toy_checkpoint(tmp_path / "bf16", [line["input"] for line in LINES], fp8=False)
    (tmp_path / "bf16" / "model.safetensors").unlink()
    with pytest.raises(OSError, match="no file named model.safetensors"):
        assets.check_loads_and_generates(tmp_path / "bf16", settings_with())


def test_loads_and_generates_is_skipped_outside_the_toy_profile(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("SFTC_PROFILE", "full")
    result = assets.check_loads_and_generates(tmp_path / "absent", load_settings())  # nothing is read
    assert result.passed
    assert _values(result) == {"skipped": "profile full: too big to load on the check's node"}


OBSERVE = """
import json, os, sys
from pathlib import Path
import dagster as dg
from sftc_assets.checkpoints import assets
from stage_helpers import settings_with

settings = settings_with(model={"base_checkpoint_path": sys.argv[1]})
(base_checkpoint,) = [a for a in assets.defs(settings).assets if a.key.path == ["base_checkpoint"]]
assert isinstance(base_checkpoint, dg.SourceAsset)
defs = dg.Definitions(assets=[base_checkpoint], jobs=[dg.define_asset_job("observe", selection=["base_checkpoint"])])
with dg.instance_for_test() as instance:
    versions = []
    for touch in (False, False, True):
        if touch:  # a re-downloaded shard is a new version
            os.utime(sorted(Path(sys.argv[1]).glob("*.safetensors"))[0], ns=(0, 0))
        assert defs.resolve_job_def("observe").execute_in_process(instance=instance).success
        observation = instance.fetch_observations(dg.AssetKey("base_checkpoint"), limit=1).records[0].asset_observation
        versions.append(observation.tags["dagster/data_version"])
    print(json.dumps({"versions": versions, "fp8_tensors": observation.metadata["fp8_tensors"].value}))
"""


@pytest.mark.slow  # a fresh process for the full profile's definitions: ~20 s on a busy 2-core machine
def test_full_profile_observes_the_external_checkpoint(tmp_path, data_dir):
    source = awkward_checkpoint(tmp_path / "DeepSeek-V3")
    env = {**os.environ, "SFTC_PROFILE": "full", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(Path(__file__).parent)}
    run = [sys.executable, "-c", textwrap.dedent(OBSERVE), str(source)]
    done = subprocess.run(run, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    observed = json.loads(done.stdout.strip().splitlines()[-1])
    first, again, touched = observed["versions"]
    assert observed["fp8_tensors"] == 6 and first == again != touched
