"""The steps of `sftc gpu-check`: what only a GPU can prove, each against the expected result of configs/gpu_check.yaml.

gpu_check.py runs each step in a child process of its own, within the step's time limit; here is what the step
does. Each returns a `StepResult` (PASS / FAIL / SKIPPED, the headline figure, the numbers behind it, details). A
step that cannot run on this node (no NeMo environment, no serving engine, a GPU without FP8 in Triton) says why,
SKIPPED; one that should run and does not (no triton on a GPU node, a broken NeMo environment) FAILs. Steps share
`work_dir`: toy_inputs writes the toy's data and checkpoint there, hf_cuda its fine-tuned model, serving serves it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from sftc_assets.checkpoints.fp8 import dequantize_fp8_torch, random_fp8, random_scale
from sftc_assets.evaluation.answers import load_model, open_answers
from sftc_assets.evaluation.servers import free_port, gpu_plan, installed_vllm
from sftc_assets.training.data import load_pairs, tokenize_split
from sftc_assets.training.generate import generate_greedy
from sftc_assets.training.nemo_runner import import_step, nemo_finetune, read_loss_rows
from sftc_assets.training.toy_inputs import ToyInputs, build_toy_inputs
from sftc_core.configs import PROJECT_ROOT, load_finetune_config
from sftc_core.gpu import probe_gpus
from sftc_core.io import atomic_write_json
from sftc_core.launch import EntryStep, entry_env
from sftc_core.nemo_format import split_file
from sftc_core.settings import Settings
from sftc_core.text import round_significant

PASS, FAIL, SKIPPED = "PASS", "FAIL", "SKIPPED"
NEMO_IMPORT = "import nemo.collections.llm; import nemo; print(nemo.__version__)"
# Triton loads FP8 from compute capability 8.9 (Ada, Hopper); below it the conversion runs the torch math on the GPU.
TRITON_FP8_CAPABILITY = (8, 9)

# Runs a launched step (the NeMo entry, through the launcher layer) to its end; raises when the job fails.
Execute = Callable[[EntryStep], object]


@dataclass
class StepResult:
    status: str
    figure: str  # the headline figure, for people
    figures: dict = field(default_factory=dict)  # the numbers behind it
    details: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StepContext:
    """What a step is handed: the settings (the toy profile as `profile`: the toy's model, data and training,
    whatever SFTC_PROFILE says), the shared work directory, how to launch the NeMo entry, and the device."""

    settings: Settings
    work_dir: Path
    execute: Execute | None = None
    device: str = "cuda"

    @property
    def toy(self) -> ToyInputs:
        return ToyInputs.at(self.work_dir / "toy")

    @property
    def hf_model(self) -> Path:
        return self.work_dir / "hf_sft"


def _verdict(ok: bool) -> str:
    return PASS if ok else FAIL


# --- cuda -----------------------------------------------------------------------------------------


def nvidia_smi() -> list[dict]:
    """The driver's view of the GPUs (name, driver version, memory), empty where nvidia-smi is not there or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        done = subprocess.run(
            [exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [
        [part.strip() for part in line.split(",")] for line in done.stdout.strip().splitlines() if done.returncode == 0
    ]
    return [{"name": row[0], "driver_version": row[1], "memory": row[2]} for row in rows if len(row) == 3]


def cuda(ctx: StepContext) -> StepResult:
    import torch

    config = ctx.settings.gpu_check.cuda
    probe = probe_gpus()
    smi = nvidia_smi()
    figures = {
        "devices": [
            {
                "name": d.name,
                "memory_gb": round(d.total_memory_bytes / 1e9, 1),
                "compute_capability": ".".join(map(str, d.compute_capability)),
            }
            for d in probe.devices
        ],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if probe.cuda_available else None,
        "driver_version": smi[0]["driver_version"] if smi else None,
    }
    if probe.device_count < config.min_devices:
        return StepResult(
            FAIL, probe.describe(), figures, [f"needed: at least {config.min_devices} CUDA device(s) visible to torch"]
        )
    details = []
    for device in probe.devices:
        a = torch.randn(1024, 1024, device=f"cuda:{device.index}", dtype=torch.bfloat16)
        value = float((a @ a).float().abs().mean())
        details.append(f"cuda:{device.index} {device.name}: bf16 matmul ran, mean |x| {value:.3g}")
        if not math.isfinite(value):
            return StepResult(FAIL, f"cuda:{device.index}: a bf16 matmul gave {value}", figures, details)
    first = probe.devices[0]
    figure = (
        f"{probe.device_count} x {first.name} ({first.total_memory_bytes / 1e9:.0f} GB, "
        f"sm_{first.compute_capability[0]}{first.compute_capability[1]}), "
        f"driver {figures['driver_version'] or 'unknown'}, CUDA {torch.version.cuda}, torch {torch.__version__}"
    )
    return StepResult(PASS, figure, figures, details)


# --- the Triton kernel ----------------------------------------------------------------------------


def median_seconds(work: Callable[[], object], repeats: int, device) -> float:
    """The median time of `work` (CUDA events on a GPU: the device's time, not the launch's)."""
    import torch

    work()  # warm-up: the kernel compiles, the allocator settles
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            work()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def copy_ratio(dequant: Callable, weight, scale, repeats: int) -> dict:
    """GB/s of `dequant(weight, scale)` (bytes read and written) against a device copy moving as many bytes,
    same device, same run."""
    import torch

    out = dequant(weight, scale)
    moved = (
        weight.numel() * weight.element_size() + scale.numel() * scale.element_size() + out.numel() * out.element_size()
    )
    source = torch.empty(
        moved // 2, dtype=torch.uint8, device=weight.device
    )  # a copy reads it and writes as much again
    target = torch.empty_like(source)
    kernel_s = median_seconds(lambda: dequant(weight, scale), repeats, weight.device)
    copy_s = median_seconds(lambda: target.copy_(source), repeats, weight.device)
    kernel, copy = moved / kernel_s / 1e9, 2 * source.numel() / copy_s / 1e9
    return {
        "bytes_moved": moved,
        "kernel_gb_per_s": round_significant(kernel, 4),
        "copy_gb_per_s": round_significant(copy, 4),
        "ratio": round_significant(kernel / copy, 4),
    }


def exact_on_shapes(dequant: Callable, shapes: list[tuple[int, int]], device: str) -> list[dict]:
    """`dequant` on `device` against the torch math on the CPU, bit for bit, for each shape (awkward FP8 and scales)."""
    import torch

    rows = []
    for shape in shapes:
        generator = torch.Generator().manual_seed(sum(shape))
        weight, scale = random_fp8(shape, generator), random_scale(shape, generator)
        got = dequant(weight.to(device), scale.to(device)).cpu().view(torch.int16)
        expected = dequantize_fp8_torch(weight, scale).view(torch.int16)
        rows.append(
            {"shape": list(shape), "exact": bool(torch.equal(got, expected)), "differing": int((got != expected).sum())}
        )
    return rows


def triton_missing() -> str | None:
    return (
        None
        if importlib.util.find_spec("triton")
        else "triton is not installed: pip install -e '.[gpu]' (make gpu-check installs it)"
    )


def triton_kernel(ctx: StepContext) -> StepResult:
    import torch

    config = ctx.settings.gpu_check.triton_kernel
    missing = triton_missing()
    if missing:
        return StepResult(FAIL, missing)
    from sftc_assets.checkpoints import kernel

    capability = torch.cuda.get_device_capability(0)
    supported, why = kernel.triton_fp8_supported(0)
    if not supported:
        if capability < TRITON_FP8_CAPABILITY:
            return StepResult(
                SKIPPED,
                f"sm_{capability[0]}{capability[1]}: {why}",
                details=[
                    "Triton loads FP8 from compute capability 8.9; "
                    "on this GPU the conversion runs the torch math (bit-identical, slower)"
                ],
            )
        return StepResult(FAIL, why)
    exact = exact_on_shapes(kernel.weight_dequant, config.shapes, "cuda")
    generator = torch.Generator().manual_seed(0)
    weight = random_fp8(config.bandwidth_shape, generator).cuda()
    scale = random_scale(config.bandwidth_shape, generator).cuda()
    bandwidth = copy_ratio(kernel.weight_dequant, weight, scale, config.repeats)
    torch_path = copy_ratio(dequantize_fp8_torch, weight, scale, config.repeats)  # the fallback, for scale
    exact_count = sum(row["exact"] for row in exact)
    ok = exact_count == len(exact) and bandwidth["ratio"] >= config.min_copy_ratio
    figure = (
        f"bit-exact on {exact_count}/{len(exact)} shapes; "
        f"{bandwidth['kernel_gb_per_s']:,.0f} GB/s = {bandwidth['ratio']:.0%} of a device copy "
        f"({bandwidth['copy_gb_per_s']:,.0f} GB/s) on {list(config.bandwidth_shape)}; "
        f"the torch path {torch_path['ratio']:.0%}"
    )
    details = [
        f"{row['shape']}: " + ("bit-exact" if row["exact"] else f"{row['differing']} element(s) differ")
        for row in exact
    ]
    return StepResult(
        _verdict(ok), figure, {"shapes": exact, "triton": bandwidth, "torch": torch_path, "detail": why}, details
    )


# --- the toy's inputs -----------------------------------------------------------------------------


def toy_inputs(ctx: StepContext) -> StepResult:
    built = build_toy_inputs(ctx.work_dir / "toy", ctx.settings.profile, ctx.settings.sft)
    pairs, checkpoint = built["pairs"], built["checkpoint"]
    load_model(ctx.toy.model_dir, "cpu")  # it loads as a Hugging Face model
    figure = (
        f"{pairs['train']} training, {pairs['validation']} validation, {pairs['test']} test pairs; "
        f"toy DeepSeek-V3, {checkpoint['parameters']:,} parameters"
    )
    return StepResult(
        PASS if all(pairs.values()) else FAIL,
        figure,
        {"pairs": pairs, "parameters": checkpoint["parameters"]},
        [f"under {ctx.work_dir / 'toy'}"],
    )


# --- the Hugging Face backend on CUDA -------------------------------------------------------------


def hf_cuda(ctx: StepContext) -> StepResult:
    from sftc_assets.training.hf_backend import run_training

    config = ctx.settings.gpu_check.hf_cuda
    profile = ctx.settings.profile
    toy = ctx.toy
    result = run_training(
        toy.model_dir,
        toy.data_dir,
        ctx.hf_model,
        profile.training,
        ctx.settings.sft,
        profile.evaluation,
        max_steps=config.max_steps,
        device=ctx.device,
    )
    return judge_training(result.metrics, config, ctx.hf_model)


def judge_training(m: dict, config, model_dir: Path) -> StepResult:
    """A fine-tune's metrics.json against hf_cuda's expected result: the validation loss fell far enough,
    the answers parse."""
    ratio = m["final_val_loss"] / m["initial_val_loss"]
    parse = m.get("parse_rate")
    ok = ratio <= config.max_val_loss_ratio and (parse is None or parse >= config.min_parse_rate)
    figures = {
        k: m.get(k)
        for k in (
            "device",
            "steps",
            "initial_val_loss",
            "final_val_loss",
            "parse_rate",
            "tokens_per_s",
            "train_seconds",
            "peft",
        )
    }
    figure = (
        f"val loss {m['initial_val_loss']:.3f} -> {m['final_val_loss']:.3f} (x{ratio:.2f}) "
        f"in {m['steps']} steps, parse rate "
        + (f"{parse:.0%}" if parse is not None else "not checked")
        + f", {m['tokens_per_s'] or 0:,.0f} tokens/s on {m['device']}"
    )
    return StepResult(
        _verdict(ok), figure, {**figures, "val_loss_ratio": round(ratio, 4)}, [f"model and logs: {model_dir}"]
    )


# --- NeMo -----------------------------------------------------------------------------------------


def nemo_missing(settings: Settings) -> str | None:
    python = settings.nemo_python
    return (
        None
        if python.is_file()
        else f"no NeMo environment on this node: {python} is not there (make .venv-nemo, or SFTC_NEMO_PYTHON)"
    )


def nemo_version(python: Path, timeout_s: float = 180) -> tuple[str | None, str]:
    """(NeMo's version, or None; what the import said) in the NeMo environment's interpreter."""
    try:
        done = subprocess.run(
            [str(python), "-c", NEMO_IMPORT],
            cwd=PROJECT_ROOT,
            env=entry_env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return None, f"`import nemo.collections.llm` took longer than {timeout_s:.0f} s"
    if done.returncode:
        return None, (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    version = done.stdout.strip().splitlines()[-1]
    return version, f"NeMo {version}"


def toy_finetune_yaml(settings: Settings, path: Path) -> Path:
    """configs/nemo/finetune.yaml on one GPU for the toy: no model parallelism, a few steps, validation twice."""
    config = settings.gpu_check.nemo
    raw = settings.finetune.model_dump(mode="json")
    raw.update(
        nodes=1,
        gpus_per_node=1,
        gpu_memory_gb=8,
        parallelism={
            "tensor": 1,
            "pipeline": 1,
            "context": 1,
            "expert": 1,
            "expert_tensor": None,
            "sequence_parallel": False,
            "layers_in_first_pipeline_stage": None,
            "layers_in_last_pipeline_stage": None,
        },
        seq_length=settings.sft.max_seq_length,
        micro_batch_size=2,
        global_batch_size=8,
        max_steps=config.steps,
        warmup_steps=2,
        val_check_interval=config.steps // 2,
        limit_val_batches=2,
        checkpoint_every_n_steps=config.steps,
        learning_rate=config.learning_rate,
        min_learning_rate=0.0,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def _validation_loss(model_dir: Path, data_dir: Path, settings: Settings, device: str) -> float:
    import torch

    from sftc_assets.training.hf_backend import validation_loss

    model, tokenizer = load_model(model_dir, device)
    examples = tokenize_split(
        tokenizer, load_pairs(split_file(data_dir, "validation")), settings.sft.max_seq_length
    ).examples
    return validation_loss(model, examples, 16, tokenizer.pad_token_id, torch.device(device))


def nemo(ctx: StepContext) -> StepResult:
    from safetensors import safe_open

    missing = nemo_missing(ctx.settings)
    if missing:
        return StepResult(SKIPPED, missing)
    version, said = nemo_version(ctx.settings.nemo_python)
    if version is None:
        return StepResult(
            FAIL,
            f"{ctx.settings.nemo_python}: {said}",
            details=["repair the NeMo environment (make .venv-nemo, requirements-nemo.txt)"],
        )
    if ctx.execute is None:
        raise ValueError("the nemo step needs a launcher to run the NeMo entry (execute)")
    toy, root = ctx.toy, ctx.work_dir / "nemo"
    shutil.rmtree(root, ignore_errors=True)  # NeMo resumes from checkpoints it finds in its work dir: start afresh
    config = load_finetune_config(toy_finetune_yaml(ctx.settings, root / "finetune.yaml"))
    checkpoint, output = root / "checkpoint", root / "sft"
    started = time.monotonic()
    ctx.execute(import_step(toy.model_dir, checkpoint))
    import_s = time.monotonic() - started
    imported = (checkpoint / "context").is_dir() and (checkpoint / "weights").is_dir()
    metrics = nemo_finetune(ctx.execute, config, toy.model_dir, checkpoint, toy.data_dir, output)
    losses = [row["loss"] for row in read_loss_rows(output)[0]]
    quarter = max(1, len(losses) // 4)
    first, last = statistics.mean(losses[:quarter]), statistics.mean(losses[-quarter:])
    names = []
    for file in sorted(output.glob("*.safetensors")):
        with safe_open(str(file), "pt") as shard:
            names += list(shard.keys())
    lora_left = [name for name in names if "lora" in name.lower() or ".adapter" in name]
    base_loss = _validation_loss(toy.model_dir, toy.data_dir, ctx.settings, ctx.device)
    tuned_loss = _validation_loss(output, toy.data_dir, ctx.settings, ctx.device)
    model, tokenizer = load_model(output, ctx.device)
    prompts = [pair["input"] for pair in load_pairs(split_file(toy.data_dir, "test"))][
        : ctx.settings.gpu_check.nemo.test_prompts
    ]
    answers = generate_greedy(model, tokenizer, prompts, ctx.settings.profile.evaluation.max_new_tokens, len(prompts))
    parse_rate = sum(ctx.settings.sft.target_format.parse_action(a) is not None for a in answers) / len(answers)
    ok = imported and last < first and not lora_left and bool(names) and tuned_loss < base_loss
    figures = {
        "nemo": version,
        "import_seconds": round(import_s, 1),
        "steps": metrics.get("steps"),
        "first_quarter_loss": round(first, 4),
        "last_quarter_loss": round(last, 4),
        "base_val_loss": round(base_loss, 4),
        "export_val_loss": round(tuned_loss, 4),
        "exported_tensors": len(names),
        "lora_tensors_left": len(lora_left),
        "test_parse_rate": round(parse_rate, 3),
    }
    figure = (
        f"NeMo {version}: import {'ok' if imported else 'MISSING context/ or weights/'} in {import_s:.0f} s; "
        f"training loss {first:.3f} -> {last:.3f} over {len(losses)} steps; "
        f"export {len(names)} tensors, {len(lora_left)} LoRA left; "
        f"validation loss base {base_loss:.3f} -> export {tuned_loss:.3f}; "
        f"test parse rate {parse_rate:.0%} on {len(prompts)} prompts"
    )
    return StepResult(
        _verdict(ok),
        figure,
        figures,
        [f"checkpoint {checkpoint}", f"export {output}", f"NeMo logs {root / 'sft_nemo'}"],
    )


# --- serving --------------------------------------------------------------------------------------


def serving_engine(settings: Settings) -> tuple[str | None, str]:
    """(the first configured engine installed here, its version) or (None, why none): vLLM in the environment of
    settings.vllm_python, SGLang importable by the `python` on PATH (the commands gpu_plan starts)."""
    cpu_build = ""
    for engine in settings.gpu_check.serving.engines:
        installed = installed_vllm(settings.vllm_python) if engine == "vllm" else None
        if installed and installed[0] == "vllm":
            return engine, installed[1]
        if installed:
            cpu_build = (
                f"; {settings.vllm_python} has vLLM's CPU build ({installed[0]} {installed[1]}): "
                "point SFTC_VLLM_PYTHON at its GPU build"
            )
        if engine == "sglang" and shutil.which("python"):
            done = subprocess.run(
                ["python", "-c", "import sglang; print(sglang.__version__)"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if done.returncode == 0:
                return engine, done.stdout.strip().splitlines()[-1]
    engines = ", ".join(settings.gpu_check.serving.engines)
    return None, (
        f"no serving engine on this node: none of {engines} is installed (vllm for {settings.vllm_python}: "
        f"SFTC_VLLM_PYTHON; sglang importable){cpu_build}"
    )


def serving_missing(settings: Settings) -> str | None:
    engine, said = serving_engine(settings)
    return None if engine else said


def serving(ctx: StepContext) -> StepResult:
    engine, version = serving_engine(ctx.settings)
    if engine is None:
        return StepResult(SKIPPED, version)
    if not (ctx.hf_model / "config.json").is_file():
        return StepResult(SKIPPED, f"no fine-tuned toy to serve: hf_cuda left nothing at {ctx.hf_model}")
    config, settings = ctx.settings.gpu_check.serving, ctx.settings
    evaluation = settings.profile.evaluation
    prompts = [pair["input"] for pair in load_pairs(split_file(ctx.toy.data_dir, "test"))]
    plan = gpu_plan(settings, engine, ctx.hf_model, gpus_per_node=1, port=free_port())
    common = {
        "endpoint": None,
        "model_dir": ctx.hf_model,
        "device": ctx.device,
        "max_new_tokens": evaluation.max_new_tokens,
        "batch_size": evaluation.batch_size,
        "concurrency": evaluation.concurrency,
    }
    started = time.monotonic()
    with open_answers(settings, server=engine, plan=plan, **common) as served:
        ready_s = time.monotonic() - started
        started = time.monotonic()
        texts = served.answer(prompts, staging=None)
        served_rate = len(prompts) / (time.monotonic() - started)
        stripped = served.tags_stripped
    with open_answers(settings, server="none", **common) as local:
        expected = local.answer(prompts)
    parse = settings.sft.target_format.parse_action
    actions = [parse(text, tags_stripped=stripped) for text in texts]
    parse_rate = sum(a is not None for a in actions) / len(prompts)
    agreement = sum(a == parse(e) for a, e in zip(actions, expected)) / len(prompts)
    ok = parse_rate >= config.min_parse_rate and agreement >= config.min_agreement
    figures = {
        "engine": engine,
        "version": version,
        "prompts": len(prompts),
        "parse_rate": round(parse_rate, 3),
        "agreement": round(agreement, 3),
        "rows_per_s": round(served_rate, 1),
        "startup_seconds": round(ready_s, 1),
        "tags_stripped": stripped,
    }
    figure = (
        f"{engine} {version}: {len(prompts)} test prompts answered, parse rate {parse_rate:.0%}, "
        "actions agree with the in-process "
        f"generate on {agreement:.0%}, {served_rate:.1f} rows/s (up in {ready_s:.0f} s)"
    )
    return StepResult(_verdict(ok), figure, figures, [f"command: {' '.join(plan.commands[0])}"])


# --- the gpu-marked tests -------------------------------------------------------------------------


def junit_counts(path: Path) -> dict:
    """Counts of a pytest JUnit XML report, the failing tests and the reasons of the skipped ones."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failing, skipped = [], []
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        for kind in ("failure", "error"):
            if (node := case.find(kind)) is not None:
                failing.append(f"{name}: {(node.get('message') or kind).splitlines()[0][:200]}")
        if (node := case.find("skipped")) is not None:
            skipped.append(f"{name}: {node.get('message') or 'skipped'}")
    return {
        **counts,
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "failing": failing,
        "skipped_reasons": skipped,
    }


def gpu_tests(ctx: StepContext) -> StepResult:
    config = ctx.settings.gpu_check.gpu_tests
    report = ctx.work_dir / "gpu_tests.xml"
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        config.marker,
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
        *config.paths,
    ]
    done = subprocess.run(argv, cwd=PROJECT_ROOT)  # its output goes to this step's log
    if not report.is_file():
        return StepResult(
            FAIL, f"pytest ended with exit code {done.returncode} and wrote no report", details=[" ".join(argv)]
        )
    counts = junit_counts(report)
    ok = (
        counts["failures"] == counts["errors"] == 0 and counts["passed"] > 0 and counts["skipped"] <= config.max_skipped
    )
    figure = (
        f"{counts['passed']} passed, {counts['failures']} failed, {counts['errors']} errors, "
        f"{counts['skipped']} skipped of {counts['tests']} (-m '{config.marker}')"
    )
    return StepResult(
        _verdict(ok),
        figure,
        {k: counts[k] for k in ("tests", "passed", "failures", "errors", "skipped")},
        counts["failing"] + counts["skipped_reasons"] + [" ".join(argv)],
    )


def write_result(path: Path, result: StepResult) -> Path:
    return atomic_write_json(path, result.as_dict())


def read_result(path: Path) -> StepResult:
    return StepResult(**json.loads(Path(path).read_text(encoding="utf-8")))
