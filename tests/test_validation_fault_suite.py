"""The fault suite: realistic mistakes in the configs of every class the nightly validation must catch, planted in a
clone of configs/, each counted caught when the first error at load or a failed GPU-plan check names the field.

Classes: config values, cross-field dates, parallelism and batch arithmetic, module names, memory / RAM / disk
sizing, sequence length, special tokens, knowledge cutoff, the launch plan, the model config, the prompt's fields
against the records, declared sizes against the model and where each GPU asset runs. The faults that only show while the
toy chain runs (a divergent learning rate, answers cut by max_new_tokens) run the real chain in
tests/test_validation_fault_suite_chain.py (slow).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from config_helpers import config_clone, edit_yaml, write_nemo_data

from sftc_assets.training.gpu_plan import build_gpu_plan
from sftc_core.checks import FAIL
from sftc_core.configs import ConfigError
from sftc_core.settings import load_settings
from sftc_platform.launchers.plan_checks import gpu_plan_launch_checks

GOAL = 0.95


@dataclass(frozen=True)
class Fault:
    cls: str
    file: str  # under configs/
    change: object  # change(raw) on the parsed file (or on the JSON for .json)
    names: str  # the field the error or the failed check must name
    env: tuple = ()
    also: tuple = ()  # (file, change) planted with it: a mistake that needs two files to show


def _set(*path_and_value):
    *path, key, value = path_and_value

    def change(raw):
        for part in path:
            raw = raw[part]
        raw[key] = value

    return change


def _parallel(**changes):
    return lambda raw: raw["parallelism"].update(changes)


def _many(*changes):
    def change(raw):
        for c in changes:
            c(raw)

    return change


FAULTS = {
    # config values
    "parse-rate threshold of 1.5": Fault(
        "config values", "eval_config.yaml", _set("min_parse_rate", 1.5), "min_parse_rate"
    ),
    "negative cost": Fault("config values", "backtest_config.yaml", _set("cost_bps", -5), "cost_bps"),
    "label horizon of 0 sessions": Fault(
        "config values", "profiles/toy.yaml", _set("corpus", "horizon_days", 0), "corpus.horizon_days"
    ),
    "negative GPU memory": Fault("config values", "nemo/finetune.yaml", _set("gpu_memory_gb", -80), "gpu_memory_gb"),
    "LoRA rank 0": Fault("config values", "nemo/finetune.yaml", _set("lora", "rank", 0), "lora.rank"),
    "batch size 0": Fault(
        "config values", "profiles/toy.yaml", _set("training", "batch_size", 0), "training.batch_size"
    ),
    "risk-free rate written in percent": Fault(
        "config values", "backtest_config.yaml", _set("risk_free_rate", 4.5), "risk_free_rate"
    ),
    "scores with the sign flipped": Fault(
        "config values",
        "backtest_config.yaml",
        lambda r: r["scores"].update(STRONG_BUY=-1.0, BUY=-0.5, SELL=0.5, STRONG_SELL=1.0),
        "scores",
    ),
    # cross-field dates
    "training window ends before it starts": Fault(
        "cross-field dates", "profiles/toy.yaml", _set("dates", "train_end", "2009-12-31"), "dates.train_end"
    ),
    "test window inside the training window": Fault(
        "cross-field dates", "profiles/full.yaml", _set("dates", "test_start", "2022-06-01"), "dates.test_start"
    ),
    "test window ends before it starts": Fault(
        "cross-field dates", "profiles/full.yaml", _set("dates", "test_end", "2025-01-31"), "dates.test_end"
    ),
    "partitions reversed": Fault(
        "cross-field dates", "profiles/toy.yaml", _set("partitions", "end", "2009-12"), "partitions.end"
    ),
    "test window past the partitions": Fault(
        "cross-field dates", "profiles/full.yaml", _set("dates", "test_end", "2026-06-30"), "partitions.end"
    ),
    "warmup as long as the training": Fault(
        "cross-field dates",
        "profiles/toy.yaml",
        lambda r: r["training"].update(warmup_steps=r["training"]["max_steps"]),
        "training.warmup_steps",
    ),
    # parallelism and batch arithmetic
    "4 nodes for TP 8 x PP 5": Fault("parallelism", "nemo/finetune.yaml", _set("nodes", 4), "parallelism"),
    "global batch not a multiple of the data-parallel size": Fault(
        "parallelism",
        "nemo/finetune.yaml",
        _many(_set("nodes", 10), _set("global_batch_size", 127)),
        "global_batch_size",
    ),
    "sequence parallel without tensor parallelism": Fault(
        "parallelism", "nemo/finetune.yaml", _parallel(tensor=1), "parallelism.sequence_parallel"
    ),
    "pipeline split of 13 + 3 x 12 + 13 = 62 layers": Fault(
        "parallelism",
        "nemo/finetune.yaml",
        _parallel(layers_in_last_pipeline_stage=13),
        "layers_in_first/last_pipeline_stage",
    ),
    "7 pipeline stages for 61 layers": Fault(
        "parallelism",
        "nemo/finetune.yaml",
        _many(
            _set("nodes", 7),
            _parallel(pipeline=7, layers_in_first_pipeline_stage=None, layers_in_last_pipeline_stage=None),
        ),
        "parallelism.pipeline",
    ),
    "3-way expert parallelism for 256 experts": Fault(
        "parallelism",
        "nemo/finetune.yaml",
        _many(_set("nodes", 15), _set("global_batch_size", 129), _parallel(expert=3)),
        "parallelism.expert",
    ),
    "validation interval past the last step": Fault(
        "parallelism", "nemo/finetune.yaml", _set("val_check_interval", 2000), "val_check_interval"
    ),
    # module names
    "transformers' attention names as LoRA targets": Fault(
        "module names",
        "nemo/finetune.yaml",
        _set("lora", "target_modules", ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]),
        "lora.target_modules",
    ),
    "Llama's fused linear_qkv as a LoRA target": Fault(
        "module names",
        "nemo/finetune.yaml",
        _set("lora", "target_modules", ["linear_qkv", "linear_proj"]),
        "lora.target_modules",
    ),
    # memory, RAM, disk
    "full fine-tuning on the LoRA layout": Fault("sizing", "nemo/finetune.yaml", _set("peft", "none"), "peft"),
    "40 GB GPUs": Fault("sizing", "nemo/finetune.yaml", _set("gpu_memory_gb", 40), "gpu_memory_gb"),
    "seq_length 8192 in micro-batches of 2": Fault(
        "sizing", "nemo/finetune.yaml", _many(_set("seq_length", 8192), _set("micro_batch_size", 2)), "seq_length"
    ),
    "the import pod limited to 1 TiB": Fault(
        "sizing",
        "cluster.yaml",
        _set("node_pools", "gpu", "resources", "limits", {"memory": "1024Gi"}),
        "node_pools.gpu",
    ),
    "GPU nodes with 1 TiB of RAM": Fault(
        "sizing",
        "cluster.yaml",
        _many(
            _set("node_pools", "gpu", "node_memory", "1Ti"),
            _set("node_pools", "gpu", "resources", "limits", {"memory": "1000Gi"}),
        ),
        "node_memory",
    ),
    "a 2 TiB data volume": Fault(
        "sizing", "cluster.yaml", _set("storage", "data_volume", "2Ti"), "storage.data_volume"
    ),
    # sequence length
    "seq_length 256": Fault("sequence length", "nemo/finetune.yaml", _set("seq_length", 256), "seq_length"),
    "max_new_tokens 64 in the full profile": Fault(
        "sequence length", "profiles/full.yaml", _set("evaluation", "max_new_tokens", 64), "evaluation.max_new_tokens"
    ),
    "the full profile on the hf backend with max_seq_length 128": Fault(
        "sequence length",
        "sft_config.yaml",
        _set("max_seq_length", 128),
        "max_seq_length",
        (("SFTC_PROFILE", "full"), ("TRAIN_BACKEND", "hf")),
    ),
    # special tokens
    "a closing tag that does not pair": Fault(
        "special tokens",
        "sft_config.yaml",
        _set("special_tokens", ["<reasoning>", "</reasoning>", "<support>", "</support>", "<action>", "</Action>"]),
        "special_tokens",
    ),
    "five tags instead of six": Fault(
        "special tokens",
        "sft_config.yaml",
        _set("special_tokens", ["<reasoning>", "</reasoning>", "<support>", "</support>", "<action>"]),
        "special_tokens",
    ),
    "tags renamed, data not re-exported": Fault(
        "special tokens",
        "sft_config.yaml",
        _set("special_tokens", ["<reasoning>", "</reasoning>", "<support>", "</support>", "<answer>", "</answer>"]),
        "special_tokens",
    ),
    # knowledge cutoff
    "a test window the base model may have seen": Fault(
        "knowledge cutoff",
        "profiles/full.yaml",
        _many(_set("dates", "train_end", "2023-12-31"), _set("dates", "test_start", "2024-07-01")),
        "dates.test_start",
    ),
    "a test window starting inside the label horizon": Fault(
        "knowledge cutoff", "profiles/full.yaml", _set("dates", "test_start", "2025-01-02"), "dates.test_start"
    ),
    "no knowledge cutoff for a pretrained model": Fault(
        "knowledge cutoff", "profiles/full.yaml", _set("model", "knowledge_cutoff", None), "model.knowledge_cutoff"
    ),
    # the launch plan
    "the five-node fine-tune on the local launcher": Fault(
        "launch plan", "profiles/full.yaml", _set("launch", "launcher", "local"), "launch.launcher"
    ),
    "JobSets without a NeMo image": Fault(
        "launch plan",
        "cluster.yaml",
        _set("kubernetes", "images", {"sftc": "registry.example.com/sftc/sftc:latest"}),
        "kubernetes.images.nemo",
        also=(("profiles/full.yaml", _set("launch", "launcher", "k8s")),),
    ),
    # the prompt against the records (#25)
    "an input template without the thesis's facts": Fault(
        "prompt fields",
        "sft_config.yaml",
        _set("prompt", "input_template", "{ticker} on {as_of_date} for {horizon_days}"),
        "prompt.input_template",
    ),
    "a template slot no record fills": Fault(
        "prompt fields",
        "sft_config.yaml",
        _set("prompt", "input_template", "{sector} {ticker} {as_of_date} {horizon_days} {facts}"),
        "prompt.input_template",
    ),
    "a field left out that the template still carries": Fault(
        "prompt fields",
        "sft_config.yaml",
        _set("prompt", "omit_fields", {"horizon_days": "all theses are 5-day ones"}),
        "prompt.omit_fields",
    ),
    "the input template reworded, data not re-exported": Fault(
        "prompt fields",
        "sft_config.yaml",
        lambda r: r["prompt"].update(input_template=r["prompt"]["input_template"].replace("Ticker", "Name")),
        "prompt.input_template",
    ),
    # declared sizes against the model, and where each GPU asset runs (#25)
    "a toy-sized checkpoint in the full profile": Fault(
        "declared sizes",
        "profiles/full.yaml",
        _set("compute", "expected_checkpoint_bytes", 5_000_000),
        "compute.expected_checkpoint_bytes",
    ),
    "the BF16 size declared for the FP8 release": Fault(
        "declared sizes",
        "profiles/full.yaml",
        _set("compute", "expected_checkpoint_bytes", 1_377_000_000_000),
        "compute.expected_checkpoint_bytes",
    ),
    "a CPU limit above the release": Fault(
        "declared sizes",
        "profiles/full.yaml",
        _set("compute", "cpu_max_checkpoint_bytes", 10**12),
        "compute.cpu_max_checkpoint_bytes",
    ),
    "the toy declared at the full model's size": Fault(
        "declared sizes",
        "profiles/toy.yaml",
        _set("compute", "expected_checkpoint_bytes", 689 * 10**9),
        "compute.expected_checkpoint_bytes",
    ),
    "sequences longer than the toy model's positions": Fault(
        "declared sizes", "sft_config.yaml", _set("max_seq_length", 4096), "max_seq_length"
    ),
    "a serving plan on 16-GPU nodes of an 8-GPU pool": Fault(
        "declared sizes",
        "profiles/full.yaml",
        _set("evaluation", "serving", "gpus_per_node", 16),
        "evaluation.serving.gpus_per_node",
    ),
    # the model config
    "a reference config without its layer count": Fault(
        "model config", "models/deepseek-v3.json", lambda r: r.pop("num_hidden_layers"), "num_hidden_layers"
    ),
    "a vocabulary that is not the model's": Fault(
        "model config", "profiles/full.yaml", _set("model", "vocab_size", 128000), "model.vocab_size"
    ),
}


def _plant(tmp_path: Path, fault: Fault) -> Path:
    config_dir = config_clone(tmp_path)
    for file, change in ((fault.file, fault.change), *fault.also):
        path = config_dir / file
        if path.suffix == ".json":
            raw = json.loads(path.read_text())
            change(raw)
            path.write_text(json.dumps(raw))
        else:
            edit_yaml(path, change)
    return config_dir


def outcome(tmp_path: Path, fault: Fault) -> tuple[bool, str]:
    """(caught, the first error or the failed checks) for one fault: load the settings, then the GPU plan."""
    config_dir = _plant(tmp_path, fault)
    data_dir = tmp_path / "data"
    write_nemo_data(
        data_dir / "nemo_jsonl", load_settings(env={}, dotenv_path=tmp_path / "none").sft
    )  # exported before the fault
    env = {"SFTC_DATA_DIR": str(data_dir), **dict(fault.env)}
    try:
        settings = load_settings(env=env, dotenv_path=tmp_path / "none", config_dir=config_dir)
    except ConfigError as exc:
        message = str(exc)
        file = config_dir / fault.file if not fault.file.startswith("models/") else config_dir
        return str(file) in message and fault.names in message, f"at load: {message}"
    failed = [
        c
        for c in build_gpu_plan(settings, check_nemo=False, launch_checks=gpu_plan_launch_checks).checks
        if c.status == FAIL
    ]
    text = " | ".join(f"{c.name}: {c.found}. Fix: {c.fix}" for c in failed)
    return bool(failed) and fault.names in text, f"GPU plan: {text or 'no check failed'}"


def test_the_shipped_configs_pass_in_the_same_harness(tmp_path):
    clean = Fault("none", "eval_config.yaml", lambda raw: None, "")
    caught, said = outcome(tmp_path, clean)
    assert said == "GPU plan: no check failed"


def test_every_planted_fault_is_named_before_any_gpu_step(tmp_path):
    results = {name: outcome(tmp_path / f"f{i}", fault) for i, (name, fault) in enumerate(FAULTS.items())}
    missed = {name: said for name, (caught, said) in results.items() if not caught}
    caught = len(results) - len(missed)
    classes = sorted({fault.cls for fault in FAULTS.values()})
    print(
        f"\nfault suite: {len(results)} planted in {len(classes)} classes, "
        f"{caught} caught ({caught / len(results):.0%})"
    )
    for name, (_, said) in results.items():
        print(f"  {name}: {said[:200]}")
    assert caught / len(results) >= GOAL, missed
    assert not missed, missed  # today every one is named; a miss is a regression to look at


@pytest.mark.parametrize(
    "name",
    [
        "pipeline split of 13 + 3 x 12 + 13 = 62 layers",
        "transformers' attention names as LoRA targets",
        "full fine-tuning on the LoRA layout",
    ],
)
def test_the_faults_of_the_issue_are_named_by_their_plan_check(tmp_path, name):
    """The three mistakes that passed the nightly validation with YES before the GPU plan was checked."""
    caught, said = outcome(tmp_path, FAULTS[name])
    assert caught and said.startswith("GPU plan: ")


def test_a_fault_planted_after_a_yes_makes_the_report_stale(tmp_path):
    """The report's code version carries the settings the GPU plan reads (the reference model config included):
    `sftc run` redoes the report after an edit instead of keeping the old YES as up to date."""
    from sftc_assets.reports import assets as report_assets

    def version(config_dir: Path) -> str:
        settings = load_settings(env={}, dotenv_path=tmp_path / "none", config_dir=config_dir)
        (report,) = report_assets.defs(settings).assets
        return report.code_versions_by_key[next(iter(report.keys))]

    shipped = version(config_clone(tmp_path / "a"))
    assert version(config_clone(tmp_path / "b")) == shipped  # the same files, the same version
    assert version(_plant(tmp_path / "c", FAULTS["transformers' attention names as LoRA targets"])) != shipped
    assert version(_plant(tmp_path / "d", FAULTS["a reference config without its layer count"])) != shipped
