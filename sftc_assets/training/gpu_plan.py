"""The GPU plan of the full profile, checked on any CPU node before anyone pays for GPUs.

Against the base model's architecture (`architecture.py`: the checkpoint's headers where reachable, else the
release's reference config): the NeMo layout (layers per pipeline stage, heads, experts, batch arithmetic), LoRA
target names, memory per GPU, host RAM for the import and disk on the data volume (`memory.py`), the data
against the sequence length and the answer budget, the special tokens, the knowledge cutoff against the test
window, the launch plan, the NeMo environment and the target cluster. Every item is a `Check` (sftc_core/checks.py)
saying which machine it speaks of; `sftc preflight`, the `gpu_preflight` asset check and the validation report
show the same list.
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

from sftc_assets.checkpoints.safetensors_io import CheckpointError
from sftc_assets.sft_data.nemo_export import load_local_tokenizer
from sftc_assets.training import memory
from sftc_assets.training.architecture import Architecture, architecture_of
from sftc_assets.training.nemo_config import (
    NEMO_LINEAR_MODULES,
    lora_target_problems,
    model_fit_problems,
    stage_layers,
)
from sftc_assets.training.nemo_runner import entry_env
from sftc_core.checks import FAIL, GPU_PLAN, NOT_CHECKED, PASS, TARGET_CLUSTER, WARN, Check, failures
from sftc_core.configs import ConfigError, ProfileConfig, profile_path, reference_config_path
from sftc_core.market import first_unseen_date
from sftc_core.nemo_format import NEMO_FILES, NemoDataError, read_pairs
from sftc_core.settings import Settings
from sftc_core.text import format_bytes

NEMO_IMPORT = "import nemo.collections.llm"
TAG = re.compile(r"</?[A-Za-z_][A-Za-z0-9_\-]*>")
# Without the model's tokenizer: a byte-level BPE token covers at least one byte, so UTF-8 bytes bound the tokens.
# Training examples cut to the sequence length beyond this share fail the plan: NeMo cuts a prompt from its end, so each
# of them loses the response cue (the Hugging Face backend loses the prompt's start).
MAX_CUT_SHARE = 0.05
BYTES_BOUND = "at most one token per UTF-8 byte (DeepSeek-V3's tokenizer is byte-level BPE), the model's tokenizer not being reachable here"
# The launcher layer's items ("launch plan", "target cluster"): it renders the GPU run's job and asks its cluster
# (sftc_resources/launchers/plan_checks.py), so the callers above the stages hand it in.
LaunchChecks = Callable[[Settings, "Architecture | None"], list[Check]]


@dataclass(frozen=True)
class GpuPlan:
    checks: tuple[Check, ...]
    # The full profile's model as the plan read it (None: unreadable): the cost estimate sizes the checkpoints by it.
    architecture: Architecture | None = None

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


def _inputs(settings: Settings) -> _Inputs:
    profile = settings.full_profile
    active = settings.profile_name == profile.name
    return _Inputs(
        profile=profile,
        profile_file=profile_path(profile.name, settings.config_dir),
        test_start=settings.test_start_date if active else profile.dates.test_start,
        test_end=settings.test_end_date if active else profile.dates.test_end,
        backend=settings.train_backend if active else profile.training.backend,
    )


def build_gpu_plan(settings: Settings, *, launch_checks: LaunchChecks | None = None, check_nemo: bool = True) -> GpuPlan:
    """Every check of the GPU plan; `launch_checks` renders the GPU run's job and asks its cluster (None: both not checked)."""
    inputs = _inputs(settings)
    arch, arch_check = _architecture(settings, inputs)
    checks = [arch_check]
    if arch is None:
        reason = "the model's architecture is unknown (see model architecture)"
        checks += [Check(name, GPU_PLAN, NOT_CHECKED, what, reason) for name, what in (
            ("parallel layout", "the layout against the model"), ("GPU memory", "memory per GPU"),
            ("host RAM", "the NeMo import's host memory"), ("data volume", "disk for the checkpoints"),
        )]  # fmt: skip
    else:
        checks += [_layout(settings, arch), _gpu_memory(settings, arch), _host_ram(settings, arch), _data_volume(settings, arch)]
    checks += [
        _batch(settings),
        _lora_targets(settings),
        *_data_checks(settings, inputs),
        _knowledge_cutoff(inputs, settings.prices.calendar),
        nemo_environment_check(settings, check_nemo),
        *(launch_checks(settings, arch) if launch_checks else [
            Check("launch plan", GPU_PLAN, NOT_CHECKED, "the GPU run's job rendered by its launcher", "the launcher layer was not handed to the plan"),
            Check("target cluster", TARGET_CLUSTER, NOT_CHECKED, "the GPU nodes of the target cluster", "the launcher layer was not handed to the plan"),
        ]),
    ]  # fmt: skip
    return GpuPlan(tuple(checks), arch)


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
        return None, Check("model architecture", GPU_PLAN, FAIL, needed, str(exc), f"fix the file named, or model.reference_config / model.base_checkpoint_path in {inputs.profile_file}")
    details = [f"read from {arch.source}"]
    if arch.counted_params is not None and arch.counted_params != arch.checkpoint_params:
        return arch, Check(
            "model architecture", GPU_PLAN, FAIL, needed,
            f"the checkpoint holds {arch.counted_params:,} parameters but its config.json implies {arch.checkpoint_params:,}",
            f"the checkpoint at {checkpoint} is incomplete or its config.json belongs to another model: download both again",
        )  # fmt: skip
    if model.vocab_size != arch.vocab:
        return arch, Check("model architecture", GPU_PLAN, FAIL, needed, f"{arch.summary()}, but model.vocab_size is {model.vocab_size}",
                           f"set model.vocab_size: {arch.vocab} in {inputs.profile_file}")
    if checkpoint is not None and not checkpoint.is_dir():
        details.append(f"the checkpoint {checkpoint} is not reachable from this node: the reference config stands in for it")
    return arch, Check("model architecture", GPU_PLAN, PASS, needed, arch.summary(), details=tuple(details))


def _layout(settings: Settings, arch: Architecture) -> Check:
    config = settings.finetune
    p = config.parallelism
    problems = model_fit_problems(config, {"num_layers": arch.layers, "num_attention_heads": arch.heads, "num_moe_experts": arch.experts})
    stages = stage_layers(config, arch.layers)
    details = (
        f"world size: nodes {config.nodes} x gpus_per_node {config.gpus_per_node} = {config.world_size} = tensor {p.tensor} x pipeline "
        f"{p.pipeline} x context {p.context} x data-parallel {config.data_parallel_size}",
        f"layers per pipeline stage: {' + '.join(map(str, stages))} = {sum(stages)} of the model's {arch.layers}" if stages else
        f"layers per pipeline stage: {p.pipeline} stages do not split {arch.layers} layers",
        f"attention heads: {arch.heads} / tensor {p.tensor} = {arch.heads / p.tensor:g} per rank",
        f"routed experts: {arch.experts} / expert {p.expert} = {arch.experts / p.expert:g} per rank"
        + f", expert_tensor {p.expert_tensor or p.tensor}" + ("" if p.expert_tensor else " (the tensor size)"),
        f"sequence parallel: {'on' if p.sequence_parallel else 'off'} with tensor {p.tensor}",
    )  # fmt: skip
    needed = "layers per stage adding up to the model's, heads divisible by tensor, experts by expert parallelism"
    if problems:
        wrong = "; ".join(f"{field} {message}" for field, message in problems)
        return Check("parallel layout", GPU_PLAN, FAIL, needed, wrong, f"change parallelism in {config.source}", details)
    found = f"TP {p.tensor} x PP {p.pipeline} x CP {p.context} x DP {config.data_parallel_size}, EP {p.expert}, stages {'/'.join(map(str, stages))}"
    return Check("parallel layout", GPU_PLAN, PASS, needed, found, details=details)


def _batch(settings: Settings) -> Check:
    config = settings.finetune
    per_step = config.micro_batch_size * config.data_parallel_size
    micro_batches = config.global_batch_size // per_step
    details = (
        f"global_batch_size {config.global_batch_size} = micro_batch_size {config.micro_batch_size} x data-parallel "
        f"{config.data_parallel_size} x {micro_batches} micro-batches per step",
        f"pipeline {config.parallelism.pipeline}: the 1F1B schedule idles (pipeline - 1) / (micro-batches + pipeline - 1) = "
        f"{(config.parallelism.pipeline - 1) / (micro_batches + config.parallelism.pipeline - 1):.0%} of each step",
    )
    needed = "global batch a multiple of micro batch x data-parallel size, at least one micro-batch per pipeline stage"
    found = f"{micro_batches} micro-batches of {config.micro_batch_size} per step on each of {config.data_parallel_size} data-parallel rank(s)"
    if micro_batches < config.parallelism.pipeline:
        return Check("batch arithmetic", GPU_PLAN, WARN, needed, found + f", fewer than the {config.parallelism.pipeline} pipeline stages",
                     f"raise global_batch_size in {config.source} to at least {per_step * config.parallelism.pipeline}", details)
    return Check("batch arithmetic", GPU_PLAN, PASS, needed, found, details=details)


def _lora_targets(settings: Settings) -> Check:
    config = settings.finetune
    needed = f"LoRA target_modules among NeMo 2.7.3's DeepSeek-V3 modules: {', '.join(NEMO_LINEAR_MODULES)}"
    if config.peft != "lora":
        return Check("LoRA targets", GPU_PLAN, PASS, needed, "peft none: a full fine-tune, no adapters")
    problems = lora_target_problems(list(config.lora.target_modules))
    if problems:
        return Check("LoRA targets", GPU_PLAN, FAIL, needed, f"lora.target_modules names no NeMo module for {'; '.join(problems)}: LoRA would add no adapter there",
                     f"use NeMo's names in lora.target_modules of {config.source}")
    return Check("LoRA targets", GPU_PLAN, PASS, needed, ", ".join(config.lora.target_modules))


def _estimate_check(name: str, estimate: memory.Estimate | None, needed: str, fix: str, unknown: str) -> Check:
    if estimate is None:
        return Check(name, GPU_PLAN, NOT_CHECKED, needed, unknown)
    found = f"{format_bytes(estimate.needed_bytes)} for {estimate.what}"
    if estimate.fits is None:
        return Check(name, GPU_PLAN, NOT_CHECKED, needed, found + f"; {estimate.available_how}", fix, tuple(estimate.lines()))
    found += f", {format_bytes(estimate.available_bytes)} available"
    return Check(name, GPU_PLAN, PASS if estimate.fits else FAIL, needed, found, "" if estimate.fits else fix, tuple(estimate.lines()))


def _gpu_memory(settings: Settings, arch: Architecture) -> Check:
    config = settings.finetune
    estimate = memory.gpu_memory(arch, config)
    fix = (
        f"in {config.source}: more nodes or pipeline / tensor / expert parallelism, recompute: full, a smaller seq_length or "
        f"micro_batch_size" + (", or peft: lora" if config.peft == "none" else "") + "; or GPUs with more memory (gpu_memory_gb)"
    )
    return _estimate_check("GPU memory", estimate, f"the busiest rank's weights, trainable state and activations within gpu_memory_gb {config.gpu_memory_gb:g}",
                           fix, "the layers do not split over the pipeline stages (see parallel layout)")


def _host_ram(settings: Settings, arch: Architecture) -> Check:
    pool = settings.cluster.node_pools.gpu
    usable = pool.usable_memory_bytes
    how = ("node_pools.gpu node_memory and resources.limits.memory of configs/cluster.yaml (the smaller)" if usable is not None
           else "configs/cluster.yaml gives no node_memory or memory limit for node_pools.gpu")  # fmt: skip
    estimate = memory.import_host_memory(arch, usable, how)
    fix = "GPU nodes with more host memory (node_pools.gpu.node_memory in configs/cluster.yaml) and a memory limit that gives it to the import pod"
    if usable is None:
        fix = "set node_pools.gpu.node_memory (and resources.limits.memory) in configs/cluster.yaml"
    return _estimate_check("host RAM", estimate, "host memory of a GPU node for the NeMo import (nemo_model)", fix, "")


def _data_volume(settings: Settings, arch: Architecture) -> Check:
    storage = settings.cluster.storage
    available = storage.data_volume_bytes if storage else None
    how = "storage.data_volume of configs/cluster.yaml" if storage else "configs/cluster.yaml has no storage.data_volume"
    estimate = memory.data_volume(arch, settings.finetune, available, how)
    fix = "a larger data volume (storage.data_volume in configs/cluster.yaml)" if storage else "set storage.data_volume in configs/cluster.yaml"
    return _estimate_check("data volume", estimate, "room on the data volume for the checkpoints the GPU run writes", fix, "")


# --- the data -------------------------------------------------------------------------------------


def _token_counter(inputs: _Inputs) -> tuple[Callable[[str, bool], int], str]:
    """(count(text, is_prompt) -> tokens, how counted): the model's tokenizer where reachable, else the byte bound."""
    path = inputs.profile.model.base_checkpoint_path
    if path and (Path(path) / "tokenizer_config.json").is_file():
        tokenizer = load_local_tokenizer(path)
        eos = 1 if tokenizer.eos_token_id is not None else 0

        def count(text: str, prompt: bool) -> int:
            return len(tokenizer(text, add_special_tokens=prompt)["input_ids"]) + (0 if prompt else eos)

        return count, f"counted with the model's tokenizer ({path})"
    return (lambda text, prompt: len(text.encode("utf-8")) + 1), f"estimated: {BYTES_BOUND}, plus BOS / EOS"


def _data_checks(settings: Settings, inputs: _Inputs) -> list[Check]:
    names = ("sequence length", "answer length", "special tokens")
    root = settings.paths.nemo_jsonl
    try:
        pairs = {split: read_pairs(root / NEMO_FILES[split]) for split in ("train", "validation")}
    except FileNotFoundError as exc:
        return [Check(name, GPU_PLAN, NOT_CHECKED, "the NeMo JSONL of this data directory", str(exc).split(";")[0] + ": nothing to measure yet",
                      "materialize nemo_jsonl (sftc export-nemo), then check again") for name in names]  # fmt: skip
    except NemoDataError as exc:
        return [Check(name, GPU_PLAN, FAIL, "the NeMo JSONL of this data directory", str(exc), "re-export nemo_jsonl (sftc export-nemo)") for name in names]
    count, how = _token_counter(inputs)
    rows = [(count(p["input"], True), count(p["output"], False)) for split in pairs.values() for p in split]
    train = len(pairs["train"])
    return [_sequence_length(settings, inputs, rows, train, how), _answer_length(inputs, rows, how), _special_tokens(settings, pairs, root)]


def _sequence_length(settings: Settings, inputs: _Inputs, rows: list[tuple[int, int]], train: int, how: str) -> Check:
    if inputs.backend == "nemo":
        limit, field, where = settings.finetune.seq_length, "seq_length", settings.finetune.source
        cut = "NeMo cuts the prompt from its end (the response cue goes first), then the answer's end"
    else:
        limit, field, where = settings.sft.max_seq_length, "max_seq_length", settings.config_dir / "sft_config.yaml"
        cut = "the Hugging Face backend drops the prompt's beginning, then the answer's end"
    longer = sum(1 for prompt, answer in rows[:train] if prompt + answer > limit)
    lose_action = sum(1 for _, answer in rows if answer > limit)
    longest = max(prompt + answer for prompt, answer in rows)
    needed = (f"training examples within {field} {limit} of the {inputs.backend} backend (at most {MAX_CUT_SHARE:.0%} cut), "
              "every answer whole (its <action> last)")
    found = f"{longer} of {train} training examples ({longer / train:.1%}) longer than {limit} tokens; the longest {longest}"
    details = (f"tokens {how}", f"{cut} when an example is too long", f"answers longer than {field} alone (their action lost): {lose_action}")
    if lose_action:
        return Check("sequence length", GPU_PLAN, FAIL, needed, found + f"; {lose_action} answer(s) would lose their action",
                     f"raise {field} in {where} to at least {max(a for _, a in rows)}", details)
    status = FAIL if longer > MAX_CUT_SHARE * train else WARN if longer else PASS
    if status == FAIL:
        found += f", above the {MAX_CUT_SHARE:.0%} the plan accepts"
    return Check("sequence length", GPU_PLAN, status, needed, found, f"raise {field} in {where} to {longest}" if longer else "", details)


def _answer_length(inputs: _Inputs, rows: list[tuple[int, int]], how: str) -> Check:
    limit = inputs.profile.evaluation.max_new_tokens
    longest = max(answer for _, answer in rows)
    needed = f"evaluation.max_new_tokens {limit} of the {inputs.profile.name} profile above the longest answer, so no answer is cut before its action"
    found = f"answers up to {longest} tokens" + (" (at most: one per byte)" if how.startswith("estimated") else "")
    if longest > limit:
        return Check("answer length", GPU_PLAN, FAIL, needed, found + f": generation would stop at {limit}, before </action>",
                     f"raise evaluation.max_new_tokens in {inputs.profile_file} to at least {longest}")
    return Check("answer length", GPU_PLAN, PASS, needed, found)


def _special_tokens(settings: Settings, pairs: dict[str, list[dict]], root: Path) -> Check:
    configured = list(settings.sft.special_tokens)
    sft_file = settings.config_dir / "sft_config.yaml"
    used = sorted({tag for split in pairs.values() for p in split for tag in TAG.findall(p["output"])})
    strangers = [tag for tag in used if tag not in configured]
    missing = [tag for tag in configured if any(tag not in p["output"] for split in pairs.values() for p in split)]
    needed = "every tag of the answers a configured special token, each in every answer; both backends told how to read them"
    details = (
        f"configured (special_tokens of {sft_file}): {', '.join(configured)}; the target format and the parser are built from them",
        "Hugging Face backend: added to the tokenizer as special tokens, one id each, their embedding rows trained",
        "NeMo backend: read as text by the model's own tokenizer (a few tokens each): under LoRA the embedding and output "
        "layer stay frozen, so new ids could never be learned; the parser reads the text either way",
    )
    if strangers or missing:
        found = f"{root} uses {', '.join(strangers) or 'no other tags'}" + (f" and lacks {', '.join(missing)} in some answers" if missing else "")
        return Check("special tokens", GPU_PLAN, FAIL, needed, found + " against the configured special_tokens",
                     f"re-export nemo_jsonl (sftc export-nemo) after changing special_tokens in {sft_file}, or set them back", details)
    return Check("special tokens", GPU_PLAN, PASS, needed, f"{len(configured)} tags, each in all {sum(map(len, pairs.values()))} answers", details=details)


# --- the base model's knowledge -------------------------------------------------------------------


def _knowledge_cutoff(inputs: _Inputs, calendar: str) -> Check:
    model, horizon = inputs.profile.model, inputs.profile.corpus.horizon_days
    needed = "the test window after the base model's knowledge cutoff plus the label horizon"
    if model.knowledge_cutoff is None:
        return Check("knowledge cutoff", GPU_PLAN, FAIL, needed, "model.knowledge_cutoff is not set: nothing says the base model has not seen the test window",
                     f"set model.knowledge_cutoff in {inputs.profile_file} to the last date of the base model's training data")
    first = first_unseen_date(model.knowledge_cutoff, horizon, calendar)
    found = f"test window {inputs.test_start}..{inputs.test_end}; cutoff {model.knowledge_cutoff} + {horizon} sessions: unseen from {first}"
    if inputs.test_start < first:
        return Check("knowledge cutoff", GPU_PLAN, FAIL, needed, found + ": the model may know the outcomes of the first test months",
                     f"move dates.test_start in {inputs.profile_file} (or TEST_START_DATE) to {first} or later; the backtest reports the two sides apart meanwhile")
    return Check("knowledge cutoff", GPU_PLAN, PASS, needed, found)


# --- where it runs --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _nemo_import(python: str, modified: float, timeout_s: float) -> tuple[bool, str]:
    """(imports, what it said) for the interpreter at `python` (cached per file version: the import takes seconds)."""
    try:
        done = subprocess.run([python, "-c", f"{NEMO_IMPORT}; import nemo; print(nemo.__version__)"],
                              env={**os.environ, **entry_env()}, capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
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
        return Check("NeMo environment", GPU_PLAN, NOT_CHECKED, f"`{NEMO_IMPORT}` in the image {image}",
                     f"image {image} (launcher {launcher}): pulled by the GPU nodes, not from here")  # fmt: skip
    if launcher == "k8s":
        return Check("NeMo environment", GPU_PLAN, FAIL, "an image for the NeMo steps", "configs/cluster.yaml names no kubernetes.images.nemo",
                     "set kubernetes.images.nemo in configs/cluster.yaml (deploy/nemo-k8s.md)")  # fmt: skip
    python = Path(on_slurm.python) if on_slurm and on_slurm.python else settings.nemo_python
    needed = f"`{NEMO_IMPORT}` in {python} (launcher {launcher}: the same path on the node that runs the step)"
    if not python.is_file():
        return Check("NeMo environment", GPU_PLAN, NOT_CHECKED, needed, f"{python} is not on this node", "make .venv-nemo (or set SFTC_NEMO_PYTHON) on the GPU node")
    if not check_nemo:
        return Check("NeMo environment", GPU_PLAN, NOT_CHECKED, needed, f"{python} present, import not tried (--no-nemo)")
    ok, said = _nemo_import(str(python), python.stat().st_mtime, timeout_s)
    return Check("NeMo environment", GPU_PLAN, PASS if ok else FAIL, needed, said, "" if ok else f"repair {python} (make .venv-nemo, requirements-nemo.txt)")
