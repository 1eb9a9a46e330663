"""The GPU plan of the full profile, checked on any CPU node before anyone pays for GPUs.

Against the base model's architecture (`architecture.py`: the checkpoint's headers where reachable, else the
release's reference config): the NeMo layout (layers per pipeline stage, heads, experts, batch arithmetic), LoRA
target names, memory per GPU, host RAM for the import and disk on the data volume (`memory.py`), the sizes the
profiles declare (the checkpoint size routing reads, the toy's against the toy model too; the sequences against the
model's positions; one GPU node in every file), the prompts against the templates and the records' fields, the data
against the sequence length and the answer budget, the special tokens, the knowledge cutoff against the test
window, where each GPU asset runs, the launch plan, the NeMo environment and the target cluster. Every item is a
`Check` (sftc_core/checks.py) saying which machine it speaks of; `sftc preflight`, the `gpu_preflight` asset check
and the validation report show the same list.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sftc_assets.checkpoints.fp8 import QUANTIZATION_CONFIG
from sftc_assets.checkpoints.safetensors_io import CheckpointError
from sftc_assets.checkpoints.toy_model import toy_config
from sftc_assets.sft_data.prompts import prompt_pattern
from sftc_assets.training import hf_launch, memory, nemo_runner
from sftc_assets.training.architecture import Architecture, architecture_of
from sftc_assets.training.nemo_config import (
    NEMO_LINEAR_MODULES,
    lora_target_problems,
    model_fit_problems,
    stage_layers,
)
from sftc_assets.training.token_counts import PairTokens, TokenCounter, nemo_pairs, pair_tokens, token_counter
from sftc_core.checks import FAIL, GPU_PLAN, NOT_CHECKED, PASS, TARGET_CLUSTER, TOY_CHAIN, WARN, Check, failures
from sftc_core.configs import (
    NOT_IN_PROMPT,
    PROMPT_SLOTS,
    ConfigError,
    ProfileConfig,
    profile_path,
    reference_config_path,
)
from sftc_core.launch import PlannedRun, entry_env
from sftc_core.market import first_unseen_date
from sftc_core.nemo_format import NEMO_FILES, NemoDataError
from sftc_core.settings import Settings
from sftc_core.text import format_bytes, format_number

NEMO_IMPORT = "import nemo.collections.llm"
TAG = re.compile(r"</?[A-Za-z_][A-Za-z0-9_\-]*>")
# Training examples cut to the sequence length beyond this share fail the plan: NeMo cuts a prompt from its end, so each
# of them loses the response cue (the Hugging Face backend loses the prompt's start).
MAX_CUT_SHARE = 0.05
# A declared size may differ from the one derived from the model by this factor either way: GiB written for GB (1.07x)
# passes; the BF16 size written for the FP8 release (about 2x) or another model's number does not.
SIZE_FACTOR = 1.5
# The launcher layer's items ("routing: <asset>", "launch plan", "target cluster"): it renders the GPU run's job and
# asks its cluster (sftc_platform/launchers/plan_checks.py), so the callers above the stages hand it in, and the plan
# hands it the run as planned here.
LaunchChecks = Callable[[Settings, PlannedRun], list[Check]]


@dataclass(frozen=True)
class GpuPlan:
    checks: tuple[Check, ...]
    # The full profile's model as the plan read it (None: unreadable): the cost estimate sizes the checkpoints by it.
    architecture: Architecture | None = None
    # The NeMo JSONL's token counts under DeepSeek-V3's tokenizer (None: no data yet): the estimate's tokens per step.
    tokens: PairTokens | None = None

    @property
    def passed(self) -> bool:
        return not failures(self.checks)

    def as_dict(self) -> dict:
        return {"passed": self.passed, "checks": [check.as_dict() for check in self.checks]}


@dataclass(frozen=True)
class _Inputs:
    """What the plan speaks of: the full profile (with this environment's dates when it is the active one)."""

    profile: ProfileConfig
    profile_file: Path
    test_start: dt.date
    test_end: dt.date
    backend: str


def plan_backend(settings: Settings) -> str:
    """The GPU run's training backend: this environment's where the full profile is the active one, else its own."""
    full = settings.full_profile
    return settings.train_backend if settings.profile_name == full.name else full.training.backend


def planned_run(settings: Settings, arch: Architecture | None) -> PlannedRun:
    """The full profile's GPU run: its NeMo steps, the fine-tune of its backend, the import, and their sizes."""
    full, paths = settings.full_profile, settings.paths
    nemo_steps = nemo_runner.planned_steps(
        settings.finetune, paths.bf16_checkpoint, paths.nemo_model, paths.nemo_jsonl, paths.sft_model
    )
    finetune = nemo_steps[0]
    if plan_backend(settings) == "hf":
        shape = full.launch
        finetune = hf_launch.training_step(
            paths.bf16_checkpoint,
            paths.nemo_jsonl,
            paths.sft_model,
            full.training,
            settings.sft,
            full.evaluation,
            nodes=shape.nodes,
            procs_per_node=shape.procs_per_node,
            gpus_per_node=shape.gpus_per_node,
            write=False,
        )
    return PlannedRun(
        nemo_steps=tuple(nemo_steps),
        finetune=finetune,
        import_step=nemo_runner.import_step(paths.bf16_checkpoint, paths.nemo_model),
        checkpoint_bytes=arch.checkpoint_size()[0] if arch is not None else None,
        bf16_bytes=arch.bf16_checkpoint_bytes if arch is not None else None,
        import_host_bytes=memory.import_host_memory(arch, None, "").needed_bytes if arch is not None else 0,
    )


def _inputs(settings: Settings) -> _Inputs:
    profile = settings.full_profile
    active = settings.profile_name == profile.name
    return _Inputs(
        profile=profile,
        profile_file=profile_path(profile.name, settings.config_dir),
        test_start=settings.test_start_date if active else profile.dates.test_start,
        test_end=settings.test_end_date if active else profile.dates.test_end,
        backend=plan_backend(settings),
    )


def build_gpu_plan(
    settings: Settings, *, launch_checks: LaunchChecks | None = None, check_nemo: bool = True
) -> GpuPlan:
    """Every check of the GPU plan; `launch_checks` renders the GPU run's job
    and asks its cluster (None: both not checked)."""
    inputs = _inputs(settings)
    arch, arch_check = _architecture(settings, inputs)
    checks = [arch_check]
    if arch is None:
        reason = "the model's architecture is unknown (see model architecture)"
        checks += [
            Check(name, GPU_PLAN, NOT_CHECKED, what, reason)
            for name, what in (
                ("parallel layout", "the layout against the model"),
                ("GPU memory", "memory per GPU"),
                ("host RAM", "the NeMo import's host memory"),
                ("data volume", "disk for the checkpoints"),
            )
        ]
    else:
        checks += [
            _layout(settings, arch),
            _gpu_memory(settings, arch),
            _host_ram(settings, arch),
            _data_volume(settings, arch),
        ]
    data_checks, tokens = _data_checks(settings, inputs)
    checks += [
        _full_sizes(settings, inputs, arch),
        _toy_sizes(settings),
        _gpu_node(settings, inputs),
        _batch(settings),
        _lora_targets(settings),
        *data_checks,
        _knowledge_cutoff(inputs, settings.prices.calendar),
        nemo_environment_check(settings, check_nemo),
        *(
            launch_checks(settings, planned_run(settings, arch))
            if launch_checks
            else [
                Check(
                    "launch plan",
                    GPU_PLAN,
                    NOT_CHECKED,
                    "the GPU run's job rendered by its launcher",
                    "the launcher layer was not handed to the plan",
                ),
                Check(
                    "target cluster",
                    TARGET_CLUSTER,
                    NOT_CHECKED,
                    "the GPU nodes of the target cluster",
                    "the launcher layer was not handed to the plan",
                ),
            ]
        ),
    ]
    return GpuPlan(tuple(checks), arch, tokens)


# --- the model ------------------------------------------------------------------------------------


def full_architecture(settings: Settings) -> Architecture | None:
    """The full profile's model as the plan reads it (None: unreadable, the plan's `model architecture` check says why);
    the GPU run's cost estimate sizes its checkpoints by it."""
    return _architecture(settings, _inputs(settings))[0]


def _architecture(settings: Settings, inputs: _Inputs) -> tuple[Architecture | None, Check]:
    model = inputs.profile.model
    checkpoint = Path(model.base_checkpoint_path) if model.base_checkpoint_path else None
    needed = "DeepSeek-V3's architecture: the checkpoint's config.json and headers, else model.reference_config"
    try:
        reference = reference_config_path(inputs.profile, settings.config_dir)
        arch = architecture_of(checkpoint, settings.reference_models.get(inputs.profile.name), str(reference))
    except (ConfigError, CheckpointError) as exc:
        return None, Check(
            "model architecture",
            GPU_PLAN,
            FAIL,
            needed,
            str(exc),
            f"fix the file named, or model.reference_config / model.base_checkpoint_path in {inputs.profile_file}",
        )
    details = [f"read from {arch.source}"]
    if arch.counted_params is not None and arch.counted_params != arch.checkpoint_params:
        return arch, Check(
            "model architecture",
            GPU_PLAN,
            FAIL,
            needed,
            f"the checkpoint holds {arch.counted_params:,} parameters "
            f"but its config.json implies {arch.checkpoint_params:,}",
            f"the checkpoint at {checkpoint} is incomplete or its config.json belongs to another model: "
            "download both again",
        )
    if model.vocab_size != arch.vocab:
        return arch, Check(
            "model architecture",
            GPU_PLAN,
            FAIL,
            needed,
            f"{arch.summary()}, but model.vocab_size is {model.vocab_size}",
            f"set model.vocab_size: {arch.vocab} in {inputs.profile_file}",
        )
    if checkpoint is not None and not checkpoint.is_dir():
        details.append(
            f"the checkpoint {checkpoint} is not reachable from this node: the reference config stands in for it"
        )
    return arch, Check("model architecture", GPU_PLAN, PASS, needed, arch.summary(), details=tuple(details))


# --- declared sizes against the model -------------------------------------------------------------

SequenceSetting = tuple[str, int, "Path | str"]  # a setting, its tokens, its file


def _declared_sizes(
    name: str,
    scope: str,
    profile: ProfileConfig,
    profile_file: Path,
    arch: Architecture,
    sequences: list[SequenceSetting],
) -> Check:
    """compute.expected_checkpoint_bytes, the size routing reads, against the checkpoint's size derived from the model;
    the sequences the profile trains and serves against the positions the model is built for."""
    compute = profile.compute
    declared, limit = compute.expected_checkpoint_bytes, compute.cpu_max_checkpoint_bytes
    derived, how = arch.checkpoint_size()
    routed, needs = compute.auto_node, "gpu" if derived > limit else "cpu"
    needed = (
        f"compute.expected_checkpoint_bytes (what routing reads) within {SIZE_FACTOR:g}x of the checkpoint's size "
        "derived from the model, on its side of compute.cpu_max_checkpoint_bytes; the sequences within the model's "
        "positions"
    )
    shown = f"{format_bytes(declared)} ({declared:,} B)" if declared is not None else "not set"
    found = f"declared {shown}, derived {format_bytes(derived)} ({derived:,} B)"
    problems, fixes = [], []
    if declared is not None and max(declared, derived) > SIZE_FACTOR * min(declared, derived):
        side = "below" if declared < derived else "above"
        apart = max(declared, derived) / min(declared, derived)
        problems.append(f"the declared size is {format_number(apart)}x {side} the derived, beyond {SIZE_FACTOR:g}x")
    if routed != needs:
        problems.append(
            f"routing puts the auto assets (conversion, fine-tune, evaluation) on {routed} nodes, but a "
            f"{format_bytes(derived)} checkpoint is {needs} work (gpu above {format_bytes(limit)})"
        )
    if problems:
        fixes.append(f"set compute.expected_checkpoint_bytes: {derived} in {profile_file}")
    found += f"; routing uses the declared size: the auto assets on {routed} nodes"
    positions = arch.max_positions
    for setting, tokens, where in sequences:
        if positions is not None and tokens > positions:
            problems.append(f"{setting} {tokens:,} tokens exceed the model's {positions:,} positions")
            fixes.append(f"lower {setting.split(' + ')[0]} in {where} to fit {positions:,} positions")
    details = (
        f"derived: {format_bytes(derived)}, {how}",
        f"routing: compute class auto runs on a GPU node above compute.cpu_max_checkpoint_bytes "
        f"{format_bytes(limit)} of {profile_file}; it reads compute.expected_checkpoint_bytes (known before the "
        "checkpoint exists)",
        f"positions: {positions:,} (max_position_embeddings of the model)" if positions else "positions: not given",
        *(f"{setting}: {tokens:,} tokens" for setting, tokens, _ in sequences),
    )
    if problems:
        return Check(name, scope, FAIL, needed, f"{found}: " + "; ".join(problems), "; ".join(fixes), details)
    if declared is None:
        fix = (
            f"set compute.expected_checkpoint_bytes: {derived} in {profile_file} (the cost estimate and the serving "
            "plan read it where the checkpoint is not on this node)"
        )
        return Check(name, scope, WARN, needed, found + " (an unknown size counts as big)", fix, details)
    return Check(name, scope, PASS, needed, found, details=details)


def _sequences(settings: Settings, profile: ProfileConfig, backend: str) -> list[SequenceSetting]:
    """The sequences a profile trains (its backend's length) and serves (a prompt with its answer budget)."""
    sft_file = settings.config_dir / "sft_config.yaml"
    if backend == "nemo":
        training = ("seq_length", settings.finetune.seq_length, settings.finetune.source)
    else:
        training = ("max_seq_length", settings.sft.max_seq_length, sft_file)
    serving = settings.sft.max_seq_length + profile.evaluation.max_new_tokens
    return [training, ("max_seq_length + evaluation.max_new_tokens", serving, sft_file)]


def _full_sizes(settings: Settings, inputs: _Inputs, arch: Architecture | None) -> Check:
    if arch is None:
        return Check(
            "declared sizes",
            GPU_PLAN,
            NOT_CHECKED,
            "the declared sizes against the model",
            "the model's architecture is unknown (see model architecture)",
        )
    sequences = _sequences(settings, inputs.profile, inputs.backend)
    return _declared_sizes("declared sizes", GPU_PLAN, inputs.profile, inputs.profile_file, arch, sequences)


def _toy_sizes(settings: Settings) -> Check:
    """The toy profile's declared sizes against the toy model: the checkpoint in this data directory where the toy
    profile runs here, else toy_config() at the profile's vocabulary in the FP8 layout base_checkpoint writes."""
    toy = settings.profiles["toy"]
    toy_file = profile_path(toy.name, settings.config_dir)
    if toy.model.kind != "toy":
        return Check(
            "declared sizes (toy)",
            TOY_CHAIN,
            NOT_CHECKED,
            "the toy profile's sizes against the toy model",
            f"model.kind {toy.model.kind} in {toy_file}: no toy model to derive sizes from",
        )
    built = settings.paths.base_checkpoint
    try:
        arch = architecture_of(built, None) if settings.profile_name == toy.name and built.is_dir() else None
    except (ConfigError, CheckpointError):
        arch = None  # a broken build is base_checkpoint's failure to report; the toy's config stands in here
    if arch is None:
        config = {**toy_config(toy.model.vocab_size).to_dict(), "quantization_config": dict(QUANTIZATION_CONFIG)}
        source = f"toy_config(vocab_size={toy.model.vocab_size}) of sftc_assets/checkpoints/toy_model.py"
        arch = Architecture.from_hf_config(config, source)
    sequences = _sequences(settings, toy, toy.training.backend)
    return _declared_sizes("declared sizes (toy)", TOY_CHAIN, toy, toy_file, arch, sequences)


def _gpu_node(settings: Settings, inputs: _Inputs) -> Check:
    """One GPU node, described in several files: its GPUs in configs/cluster.yaml, what the NeMo fine-tune, the serving
    plan and the launch ask of each node, and the memory of its GPUs."""
    finetune, full, pool = settings.finetune, inputs.profile, settings.cluster.node_pools.gpu.gpus
    asked = {
        f"gpus_per_node of {finetune.source}": finetune.gpus_per_node,
        f"evaluation.serving.gpus_per_node of {inputs.profile_file}": full.evaluation.serving.gpus_per_node,
        f"launch.gpus_per_node of {inputs.profile_file}": full.launch.gpus_per_node,
    }
    memory_gb = {
        f"gpu_memory_gb of {finetune.source}": finetune.gpu_memory_gb,
        f"evaluation.serving.gpu_memory_gb of {inputs.profile_file}": full.evaluation.serving.gpu_memory_gb,
    }
    needed = "no step asking a node for more GPUs than node_pools.gpu.gpus of configs/cluster.yaml; one GPU memory"
    details = (
        f"node_pools.gpu.gpus of configs/cluster.yaml: {pool}",
        *(f"{where}: {count}" for where, count in asked.items()),
        *(f"{where}: {gb:g} GB" for where, gb in memory_gb.items()),
    )
    problems = [f"{where} {count} > node_pools.gpu.gpus {pool}" for where, count in asked.items() if count > pool]
    if len(set(memory_gb.values())) > 1:
        problems.append("the GPUs' memory differs: " + ", ".join(f"{where} {gb:g}" for where, gb in memory_gb.items()))
    if problems:
        fix = "make the numbers agree with the GPU nodes (node_pools.gpu.gpus of configs/cluster.yaml: GPUs per node)"
        return Check("GPU node", GPU_PLAN, FAIL, needed, "; ".join(problems), fix, details)
    found = f"{pool} GPUs of {finetune.gpu_memory_gb:g} GB per node, as every step asks"
    return Check("GPU node", GPU_PLAN, PASS, needed, found, details=details)


def _layout(settings: Settings, arch: Architecture) -> Check:
    config = settings.finetune
    p = config.parallelism
    problems = model_fit_problems(
        config, {"num_layers": arch.layers, "num_attention_heads": arch.heads, "num_moe_experts": arch.experts}
    )
    stages = stage_layers(config, arch.layers)
    details = (
        f"world size: nodes {config.nodes} x gpus_per_node {config.gpus_per_node} = {config.world_size} "
        f"= tensor {p.tensor} x pipeline {p.pipeline} x context {p.context} "
        f"x data-parallel {config.data_parallel_size}",
        f"layers per pipeline stage: {' + '.join(map(str, stages))} = {sum(stages)} of the model's {arch.layers}"
        if stages
        else f"layers per pipeline stage: {p.pipeline} stages do not split {arch.layers} layers",
        f"attention heads: {arch.heads} / tensor {p.tensor} = {arch.heads / p.tensor:g} per rank",
        f"routed experts: {arch.experts} / expert {p.expert} = {arch.experts / p.expert:g} per rank"
        + f", expert_tensor {p.expert_tensor or p.tensor}"
        + ("" if p.expert_tensor else " (the tensor size)"),
        f"sequence parallel: {'on' if p.sequence_parallel else 'off'} with tensor {p.tensor}",
    )
    needed = "layers per stage adding up to the model's, heads divisible by tensor, experts by expert parallelism"
    if problems:
        wrong = "; ".join(f"{field} {message}" for field, message in problems)
        return Check(
            "parallel layout", GPU_PLAN, FAIL, needed, wrong, f"change parallelism in {config.source}", details
        )
    found = (
        f"TP {p.tensor} x PP {p.pipeline} x CP {p.context} x DP {config.data_parallel_size}, EP {p.expert}, "
        f"stages {'/'.join(map(str, stages))}"
    )
    return Check("parallel layout", GPU_PLAN, PASS, needed, found, details=details)


def _batch(settings: Settings) -> Check:
    config = settings.finetune
    per_step = config.micro_batch_size * config.data_parallel_size
    micro_batches = config.global_batch_size // per_step
    details = (
        f"global_batch_size {config.global_batch_size} = micro_batch_size {config.micro_batch_size} x data-parallel "
        f"{config.data_parallel_size} x {micro_batches} micro-batches per step",
        f"pipeline {config.parallelism.pipeline}: the 1F1B schedule idles "
        f"(pipeline - 1) / (micro-batches + pipeline - 1) = "
        f"{(config.parallelism.pipeline - 1) / (micro_batches + config.parallelism.pipeline - 1):.0%} of each step",
    )
    needed = "global batch a multiple of micro batch x data-parallel size, at least one micro-batch per pipeline stage"
    found = (
        f"{micro_batches} micro-batches of {config.micro_batch_size} per step "
        f"on each of {config.data_parallel_size} data-parallel rank(s)"
    )
    if micro_batches < config.parallelism.pipeline:
        return Check(
            "batch arithmetic",
            GPU_PLAN,
            WARN,
            needed,
            found + f", fewer than the {config.parallelism.pipeline} pipeline stages",
            f"raise global_batch_size in {config.source} to at least {per_step * config.parallelism.pipeline}",
            details,
        )
    return Check("batch arithmetic", GPU_PLAN, PASS, needed, found, details=details)


def _lora_targets(settings: Settings) -> Check:
    config = settings.finetune
    needed = f"LoRA target_modules among NeMo 2.7.3's DeepSeek-V3 modules: {', '.join(NEMO_LINEAR_MODULES)}"
    if config.peft != "lora":
        return Check("LoRA targets", GPU_PLAN, PASS, needed, "peft none: a full fine-tune, no adapters")
    problems = lora_target_problems(list(config.lora.target_modules))
    if problems:
        return Check(
            "LoRA targets",
            GPU_PLAN,
            FAIL,
            needed,
            f"lora.target_modules names no NeMo module for {'; '.join(problems)}: LoRA would add no adapter there",
            f"use NeMo's names in lora.target_modules of {config.source}",
        )
    return Check("LoRA targets", GPU_PLAN, PASS, needed, ", ".join(config.lora.target_modules))


def _estimate_check(name: str, estimate: memory.Estimate | None, needed: str, fix: str, unknown: str) -> Check:
    if estimate is None:
        return Check(name, GPU_PLAN, NOT_CHECKED, needed, unknown)
    found = f"{format_bytes(estimate.needed_bytes)} for {estimate.what}"
    if estimate.fits is None:
        return Check(
            name, GPU_PLAN, NOT_CHECKED, needed, found + f"; {estimate.available_how}", fix, tuple(estimate.lines())
        )
    found += f", {format_bytes(estimate.available_bytes)} available"
    return Check(
        name,
        GPU_PLAN,
        PASS if estimate.fits else FAIL,
        needed,
        found,
        "" if estimate.fits else fix,
        tuple(estimate.lines()),
    )


def _gpu_memory(settings: Settings, arch: Architecture) -> Check:
    config = settings.finetune
    estimate = memory.gpu_memory(arch, config)
    fix = (
        f"in {config.source}: more nodes or pipeline / tensor / expert parallelism, recompute: full, "
        f"a smaller seq_length or micro_batch_size"
        + (", or peft: lora" if config.peft == "none" else "")
        + "; or GPUs with more memory (gpu_memory_gb)"
    )
    return _estimate_check(
        "GPU memory",
        estimate,
        f"the busiest rank's weights, trainable state and activations within gpu_memory_gb {config.gpu_memory_gb:g}",
        fix,
        "the layers do not split over the pipeline stages (see parallel layout)",
    )


def _host_ram(settings: Settings, arch: Architecture) -> Check:
    pool = settings.cluster.node_pools.gpu
    usable = pool.usable_memory_bytes
    how = (
        "node_pools.gpu node_memory and resources.limits.memory of configs/cluster.yaml (the smaller)"
        if usable is not None
        else "configs/cluster.yaml gives no node_memory or memory limit for node_pools.gpu"
    )
    estimate = memory.import_host_memory(arch, usable, how)
    fix = (
        "GPU nodes with more host memory (node_pools.gpu.node_memory in configs/cluster.yaml) "
        "and a memory limit that gives it to the import pod"
    )
    if usable is None:
        fix = "set node_pools.gpu.node_memory (and resources.limits.memory) in configs/cluster.yaml"
    return _estimate_check("host RAM", estimate, "host memory of a GPU node for the NeMo import (nemo_model)", fix, "")


def _data_volume(settings: Settings, arch: Architecture) -> Check:
    storage = settings.cluster.storage
    available = storage.data_volume_bytes if storage else None
    how = (
        "storage.data_volume of configs/cluster.yaml" if storage else "configs/cluster.yaml has no storage.data_volume"
    )
    estimate = memory.data_volume(arch, settings.finetune, available, how)
    fix = (
        "a larger data volume (storage.data_volume in configs/cluster.yaml)"
        if storage
        else "set storage.data_volume in configs/cluster.yaml"
    )
    return _estimate_check(
        "data volume", estimate, "room on the data volume for the checkpoints the GPU run writes", fix, ""
    )


# --- the data -------------------------------------------------------------------------------------


def nemo_tokens(settings: Settings) -> PairTokens | None:
    """The token counts of this data directory's NeMo JSONL as the GPU plan takes them (None: no readable data yet)."""
    inputs = _inputs(settings)
    try:
        pairs = nemo_pairs(settings.paths.nemo_jsonl)
    except (FileNotFoundError, NemoDataError):
        return None
    return pair_tokens(pairs, token_counter(inputs.profile.model.base_checkpoint_path))


def _data_checks(settings: Settings, inputs: _Inputs) -> tuple[list[Check], PairTokens | None]:
    """The data's checks and its token counts under DeepSeek-V3's tokenizer (None: no NeMo JSONL to count)."""
    names = ("sequence length", "answer length", "special tokens")
    root = settings.paths.nemo_jsonl
    data = "the NeMo JSONL of this data directory"
    try:
        pairs = nemo_pairs(root)
    except FileNotFoundError as exc:
        missing = str(exc).split(";")[0] + ": nothing to measure yet"
        fix = "materialize nemo_jsonl (sftc export-nemo), then check again"
        not_yet = [Check(name, GPU_PLAN, NOT_CHECKED, data, missing, fix) for name in names]
        return [_prompt_fields(settings, None, missing), *not_yet], None
    except NemoDataError as exc:
        fix = "re-export nemo_jsonl (sftc export-nemo)"
        return [Check(name, GPU_PLAN, FAIL, data, str(exc), fix) for name in ("prompt fields", *names)], None
    counter = token_counter(inputs.profile.model.base_checkpoint_path)
    counts = pair_tokens(pairs, counter)
    checks = [
        _prompt_fields(settings, pairs, str(root)),
        _sequence_length(settings, inputs, counts),
        _answer_length(inputs, counts),
        _special_tokens(settings, pairs, root, counter),
    ]
    return checks, counts


def _prompt_fields(settings: Settings, pairs: dict[str, list[dict]] | None, data: str) -> Check:
    """The record's fields the prompt carries (the templates were checked against them at load), and the NeMo JSONL's
    prompts against the templates: a template edited after the export leaves prompts of another shape."""
    prompt, sft_file = settings.sft.prompt, settings.config_dir / "sft_config.yaml"
    carried = prompt.carried_slots
    needed = (
        f"every record field the prompt is meant to carry in prompt.input_template of {sft_file} (or in "
        "prompt.omit_fields with its reason); the NeMo JSONL's prompts rendered by these templates"
    )
    details = (
        *(f"{field} -> {{{slot}}} of prompt.input_template" for slot, field in PROMPT_SLOTS.items() if slot in carried),
        *(f"{PROMPT_SLOTS[slot]} -> left out (omit_fields.{slot}): {why}" for slot, why in prompt.omit_fields.items()),
        *(f"{field} -> not in the prompt: {why}" for field, why in NOT_IN_PROMPT.items()),
    )
    found = f"prompt.input_template carries {', '.join('{' + slot + '}' for slot in carried)}"
    found += f"; left out on purpose: {', '.join(prompt.omit_fields)}" if prompt.omit_fields else "; none left out"
    if pairs is None:
        return Check("prompt fields", GPU_PLAN, PASS, needed, f"{found}; no prompts yet ({data})", details=details)
    pattern = prompt_pattern(settings.sft)
    rows = [(split, line, pair["input"]) for split, of_split in pairs.items() for line, pair in enumerate(of_split, 1)]
    strangers = [(split, line) for split, line, text in rows if not pattern.fullmatch(text)]
    if strangers:
        split, line = strangers[0]
        found += (
            f"; but {len(strangers):,} of {len(rows):,} prompts in {data} do not follow the templates (the first: "
            f"line {line} of {NEMO_FILES[split]})"
        )
        fix = (
            "re-export nemo_jsonl (sftc export-nemo) after changing prompt.instruction, prompt.input_template or "
            f"prompt.template in {sft_file}, or set them back"
        )
        return Check("prompt fields", GPU_PLAN, FAIL, needed, found, fix, details)
    found += f"; all {len(rows):,} training and validation prompts follow the templates"
    return Check("prompt fields", GPU_PLAN, PASS, needed, found, details=details)


def _sequence_length(settings: Settings, inputs: _Inputs, counts: PairTokens) -> Check:
    rows, train = counts.rows, counts.train
    if inputs.backend == "nemo":
        limit, field, where = settings.finetune.seq_length, "seq_length", settings.finetune.source
        cut = "NeMo cuts the prompt from its end (the response cue goes first), then the answer's end"
    else:
        limit, field, where = settings.sft.max_seq_length, "max_seq_length", settings.config_dir / "sft_config.yaml"
        cut = "the Hugging Face backend drops the prompt's beginning, then the answer's end"
    longer = sum(1 for prompt, answer in rows[:train] if prompt + answer > limit)
    lose_action = sum(1 for _, answer in rows if answer > limit)
    longest = max(prompt + answer for prompt, answer in rows)
    needed = (
        f"training examples within {field} {limit} of the {inputs.backend} backend (at most {MAX_CUT_SHARE:.0%} cut), "
        "every answer whole (its <action> last)"
    )
    found = (
        f"{longer} of {train} training examples ({longer / train:.1%}) longer than {limit} tokens; "
        f"the longest {longest}"
    )
    details = (
        f"tokens counted with {counts.source}",
        f"{cut} when an example is too long",
        f"answers longer than {field} alone (their action lost): {lose_action}",
    )
    if lose_action:
        return Check(
            "sequence length",
            GPU_PLAN,
            FAIL,
            needed,
            found + f"; {lose_action} answer(s) would lose their action",
            f"raise {field} in {where} to at least {max(a for _, a in rows)}",
            details,
        )
    status = FAIL if longer > MAX_CUT_SHARE * train else WARN if longer else PASS
    if status == FAIL:
        found += f", above the {MAX_CUT_SHARE:.0%} the plan accepts"
    return Check(
        "sequence length",
        GPU_PLAN,
        status,
        needed,
        found,
        f"raise {field} in {where} to {longest}" if longer else "",
        details,
    )


def _answer_length(inputs: _Inputs, counts: PairTokens) -> Check:
    limit = inputs.profile.evaluation.max_new_tokens
    longest = max(answer for _, answer in counts.rows)
    needed = (
        f"evaluation.max_new_tokens {limit} of the {inputs.profile.name} profile above the longest answer, "
        "so no answer is cut before its action"
    )
    found = f"answers up to {longest} tokens (with EOS), counted with {counts.source}"
    if longest > limit:
        return Check(
            "answer length",
            GPU_PLAN,
            FAIL,
            needed,
            found + f": generation would stop at {limit}, before </action>",
            f"raise evaluation.max_new_tokens in {inputs.profile_file} to at least {longest}",
        )
    return Check("answer length", GPU_PLAN, PASS, needed, found)


def _special_tokens(settings: Settings, pairs: dict[str, list[dict]], root: Path, counter: TokenCounter) -> Check:
    configured = list(settings.sft.special_tokens)
    sft_file = settings.config_dir / "sft_config.yaml"
    used = sorted({tag for split in pairs.values() for p in split for tag in TAG.findall(p["output"])})
    strangers = [tag for tag in used if tag not in configured]
    missing = [tag for tag in configured if any(tag not in p["output"] for split in pairs.values() for p in split)]
    needed = (
        "every tag of the answers a configured special token, each in every answer; both backends told how to read them"
    )
    try:
        per_tag = counter.tags(configured)
    except ValueError as exc:
        return Check("special tokens", GPU_PLAN, FAIL, needed, str(exc), "use DeepSeek-V3's own tokenizer")
    details = (
        f"configured (special_tokens of {sft_file}): {', '.join(configured)}; the target format and the parser are "
        "built from them",
        "both backends read them as text with the model's own tokenizer, no token added (under LoRA the embeddings "
        "and the output layer stay frozen, so a new id could never be learned)",
        f"tokens per tag, counted with {counter.source}: " + ", ".join(f"{tag} {n}" for tag, n in per_tag.items()),
    )
    if strangers or missing:
        found = f"{root} uses {', '.join(strangers) or 'no other tags'}" + (
            f" and lacks {', '.join(missing)} in some answers" if missing else ""
        )
        return Check(
            "special tokens",
            GPU_PLAN,
            FAIL,
            needed,
            found + " against the configured special_tokens",
            f"re-export nemo_jsonl (sftc export-nemo) after changing special_tokens in {sft_file}, or set them back",
            details,
        )
    return Check(
        "special tokens",
        GPU_PLAN,
        PASS,
        needed,
        f"{len(configured)} tags, each in all {sum(map(len, pairs.values()))} answers",
        details=details,
    )


# --- the base model's knowledge -------------------------------------------------------------------


def _knowledge_cutoff(inputs: _Inputs, calendar: str) -> Check:
    model, horizon = inputs.profile.model, inputs.profile.corpus.horizon_days
    needed = "the test window after the base model's knowledge cutoff plus the label horizon"
    if model.knowledge_cutoff is None:
        return Check(
            "knowledge cutoff",
            GPU_PLAN,
            FAIL,
            needed,
            "model.knowledge_cutoff is not set: nothing says the base model has not seen the test window",
            f"set model.knowledge_cutoff in {inputs.profile_file} to the last date of the base model's training data",
        )
    first = first_unseen_date(model.knowledge_cutoff, horizon, calendar)
    found = (
        f"test window {inputs.test_start}..{inputs.test_end}; "
        f"cutoff {model.knowledge_cutoff} + {horizon} sessions: unseen from {first}"
    )
    if inputs.test_start < first:
        return Check(
            "knowledge cutoff",
            GPU_PLAN,
            FAIL,
            needed,
            found + ": the model may know the outcomes of the first test months",
            f"move dates.test_start in {inputs.profile_file} (or TEST_START_DATE) to {first} or later; "
            "the backtest reports the two sides apart meanwhile",
        )
    return Check("knowledge cutoff", GPU_PLAN, PASS, needed, found)


# --- where it runs --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _nemo_import(python: str, modified: float, timeout_s: float) -> tuple[bool, str]:
    """(imports, what it said) for the interpreter at `python` (cached per file version: the import takes seconds)."""
    try:
        done = subprocess.run(
            [python, "-c", f"{NEMO_IMPORT}; import nemo; print(nemo.__version__)"],
            env={**os.environ, **entry_env()},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return False, f"import took longer than {timeout_s:.0f} s"
    if done.returncode:
        return False, f"exit {done.returncode}: {(done.stderr.strip().splitlines() or ['no output'])[-1]}"
    return True, f"NeMo {done.stdout.strip().splitlines()[-1]}"


def nemo_environment_check(settings: Settings, check_nemo: bool = True, timeout_s: float = 300) -> Check:
    """The NeMo environment the GPU run's launcher will use, named, and where it can be reached here, imported."""
    launcher = settings.full_profile.launch.launcher
    cluster = settings.cluster
    image = cluster.kubernetes.images.get("nemo") if launcher == "k8s" else None
    on_slurm = cluster.slurm.environments.get("nemo") if launcher == "slurm" else None
    image = image or (on_slurm.container_image if on_slurm else None)
    if image:
        return Check(
            "NeMo environment",
            GPU_PLAN,
            NOT_CHECKED,
            f"`{NEMO_IMPORT}` in the image {image}",
            f"image {image} (launcher {launcher}): pulled by the GPU nodes, not from here",
        )
    if launcher == "k8s":
        return Check(
            "NeMo environment",
            GPU_PLAN,
            FAIL,
            "an image for the NeMo steps",
            "configs/cluster.yaml names no kubernetes.images.nemo",
            "set kubernetes.images.nemo in configs/cluster.yaml (deploy/nemo-k8s.md)",
        )
    python = Path(on_slurm.python) if on_slurm and on_slurm.python else settings.nemo_python
    needed = f"`{NEMO_IMPORT}` in {python} (launcher {launcher}: the same path on the node that runs the step)"
    if not python.is_file():
        return Check(
            "NeMo environment",
            GPU_PLAN,
            NOT_CHECKED,
            needed,
            f"{python} is not on this node",
            "make .venv-nemo (or set SFTC_NEMO_PYTHON) on the GPU node",
        )
    if not check_nemo:
        return Check(
            "NeMo environment", GPU_PLAN, NOT_CHECKED, needed, f"{python} present, import not tried (--no-nemo)"
        )
    ok, said = _nemo_import(str(python), python.stat().st_mtime, timeout_s)
    return Check(
        "NeMo environment",
        GPU_PLAN,
        PASS if ok else FAIL,
        needed,
        said,
        "" if ok else f"repair {python} (make .venv-nemo, requirements-nemo.txt)",
    )
