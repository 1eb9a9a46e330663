"""Where the model's answers to the test prompts come from: a served endpoint (the default), or the in-process
generate (`--server none`, the fallback). Both give one text per prompt, in order, and say who answered.

Served answers are resumable: each answer is appended to the month's staging file (JSON lines, flushed and
fsynced) as it arrives, keyed by the model's fingerprint and the exact request; a re-run asks only for what is
not there yet. The caller writes the CSV atomically at the end, then drops the staging file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from sftc_assets.evaluation.completions import (
    Completion,
    CompletionsClient,
    Decoding,
    EndpointError,
    OnProgress,
    answer_all,
)
from sftc_assets.evaluation.servers import (
    SERVED_NAME,
    SERVERS,
    LocalLauncher,
    ServerLauncher,
    ServerPlan,
    serve,
    server_plan,
)
from sftc_assets.training.generate import generate_greedy
from sftc_core.configs import ConfigError
from sftc_core.gpu import check_device
from sftc_core.settings import Settings
from sftc_core.threads import torch_threads

log = logging.getLogger(__name__)

# The files that make a checkpoint what it is: a retrained model, a new adapter or tokenizer changes the fingerprint.
_FINGERPRINT_GLOBS = ("config.json", "*.safetensors", "tokenizer.json", "tokenizer_config.json", "adapter_config.json")


def model_fingerprint(model_dir: Path | str) -> str:
    """A short hash of the checkpoint's defining files (names, sizes, modification times): cheap on 1.3 TB."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256(str(model_dir.absolute()).encode())
    for pattern in _FINGERPRINT_GLOBS:
        for path in sorted(model_dir.rglob(pattern)):
            stat = path.stat()
            digest.update(f"{path.relative_to(model_dir)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def request_key(fingerprint: str, body: dict) -> str:
    return hashlib.sha256(json.dumps({"model": fingerprint, "request": body}, sort_keys=True).encode()).hexdigest()


class AnswerStaging:
    """A month's answers so far, one JSON object a line: {"key", "text", "finish_reason"}."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def load(self) -> dict[str, str]:
        if not self.path.is_file():
            return {}
        answers, torn = {}, 0
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                    answers[row["key"]] = row["text"]
                except (ValueError, KeyError, TypeError):
                    torn += 1  # a line cut by the interruption: that prompt is asked again
        if torn:
            log.warning("%s: %d unreadable line(s) skipped; their prompts are asked again", self.path, torn)
        return answers

    def append(self, key: str, completion: Completion) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(
                json.dumps(
                    {"key": key, "text": completion.text, "finish_reason": completion.finish_reason}, ensure_ascii=False
                )
                + "\n"
            )
            fh.flush()
            os.fsync(fh.fileno())

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # the last month done: no empty staging folder beside the CSVs


class ServedAnswers:
    """Answers from an OpenAI-compatible endpoint, `concurrency` requests in flight, staged for resumption."""

    def __init__(self, client: CompletionsClient, decoding: Decoding, concurrency: int, fingerprint: str, about: dict):
        self.client = client
        self.decoding = decoding
        self.concurrency = concurrency
        self.fingerprint = fingerprint
        self.about = {**about, "decoding": decoding.as_dict(), "concurrency": concurrency}

    @property
    def tags_stripped(self) -> bool:
        return not self.decoding.keep_special_tokens

    def answer(self, prompts: Sequence[str], staging: Path | None, on_progress: OnProgress | None = None) -> list[str]:
        keys = [request_key(self.fingerprint, self.decoding.body(p)) for p in prompts]
        store = AnswerStaging(staging) if staging is not None else None
        answered = store.load() if store is not None else {}
        todo = {k: p for k, p in zip(keys, prompts) if k not in answered}  # a repeated prompt is asked once
        resumed = len(prompts) - sum(1 for k in keys if k in todo)
        if resumed:
            log.info("%s: resuming, %d of %d answers already staged", staging, resumed, len(prompts))

        def keep(key: str, completion: Completion) -> None:
            if store is not None:
                store.append(key, completion)
            answered[key] = completion.text

        answer_all(
            self.client, self.decoding, todo, self.concurrency, keep, on_progress, resumed=resumed, total=len(prompts)
        )
        return [answered[k] for k in keys]


class InProcessAnswers:
    """The fallback: greedy `generate` of a Hugging Face checkpoint loaded in this process (one node, batched)."""

    tags_stripped = False

    def __init__(self, model, tokenizer, max_new_tokens: int, batch_size: int, cpu_threads: int | None, about: dict):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size, self.cpu_threads = max_new_tokens, batch_size, cpu_threads
        self.about = {**about, "max_new_tokens": max_new_tokens, "batch_size": batch_size}

    def answer(
        self, prompts: Sequence[str], staging: Path | None = None, on_progress: OnProgress | None = None
    ) -> list[str]:
        log.info(
            "generating in process for %d prompts (batch %d, up to %d new tokens)",
            len(prompts),
            self.batch_size,
            self.max_new_tokens,
        )
        on_batch = (lambda done: on_progress(done, len(prompts), 0)) if on_progress else None
        with torch_threads(self.cpu_threads):
            return generate_greedy(self.model, self.tokenizer, prompts, self.max_new_tokens, self.batch_size, on_batch)


def load_model(model_dir: Path | str, device: str = "cpu"):
    """The fine-tuned HF checkpoint and its tokenizer on `device` (auto, cpu, cuda, cuda:N): float32 on a CPU
    (bf16 matmuls are slow there), bf16 on GPU, spread over the visible GPUs for plain "cuda"."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir}: no config.json, not a Hugging Face checkpoint; materialize sft_model or pass --model DIR"
        )
    if check_device(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this node; use --device cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if device == "cpu":
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.bfloat16, device_map="auto" if device == "cuda" else device
        )
    return model, tokenizer


def _served_model(client: CompletionsClient, wanted: str | None) -> tuple[str, str | None]:
    """(the model name to request, who the server says owns it) from GET /v1/models. A named model is requested as
    named: a server that loads models on request (transformers serve) lists none it has not loaded yet."""
    models = client.models()
    names = [m["id"] for m in models]
    if wanted is None and len(models) == 1:
        wanted = names[0]
    elif wanted is None and SERVED_NAME in names:
        wanted = SERVED_NAME
    elif wanted is None:
        raise EndpointError(
            f"{client.url}/v1/models lists {', '.join(names) or 'no model'}; "
            f"name the fine-tuned one with --served-model (profile: evaluation.served_model)"
        )
    if wanted not in names:
        log.warning(
            "%s/v1/models lists %s, not %r: requesting it as named (a server that loads models on request "
            "lists none before)",
            client.url,
            ", ".join(names) or "no model",
            wanted,
        )
    return wanted, next((m.get("owned_by") for m in models if m["id"] == wanted), None)


def _served(
    client: CompletionsClient,
    settings: Settings,
    model: str,
    max_new_tokens: int,
    concurrency: int,
    fingerprint: str,
    about: dict,
) -> ServedAnswers:
    decoding = Decoding(
        model, max_new_tokens, (settings.sft.target_format.action[1],), settings.eval_config.client.seed
    )
    decoding = client.negotiate_special_tokens(decoding)
    return ServedAnswers(client, decoding, concurrency, fingerprint, about)


@contextlib.contextmanager
def open_answers(
    settings: Settings,
    *,
    server: str,
    endpoint: str | None,
    model_dir: Path,
    device: str,
    max_new_tokens: int,
    batch_size: int,
    concurrency: int,
    served_model: str | None = None,
    launcher: ServerLauncher | None = None,
    plan: ServerPlan | None = None,
) -> Iterator[ServedAnswers | InProcessAnswers]:
    """Who answers, for as long as the block runs: the server at `endpoint`; else a server started from the plan of
    `server` (servers.server_plan: on this node's CPU for `device` cpu, else the GPU plan; `plan` when given) through
    `launcher`, stopped afterwards; else (`server` "none") the checkpoint loaded in this process. `device` is where a
    local server or the fallback runs."""
    client_config = settings.eval_config.client
    if server not in SERVERS:
        raise ConfigError(f"server {server!r}: expected one of {', '.join(SERVERS)}")
    if endpoint:
        client = CompletionsClient(endpoint, client_config, settings.eval_api_key)
        model, owner = _served_model(client, served_model)
        about = {
            "engine": owner or "unknown",
            "engine_version": client.version() or "unknown",
            "endpoint": client.url,
            "served_model": model,
            "started_by": "someone else (--endpoint)",
        }
        yield _served(
            client,
            settings,
            model,
            max_new_tokens,
            concurrency,
            hashlib.sha256(f"{client.url} {model}".encode()).hexdigest()[:16],
            about,
        )
        return
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir}: no config.json, not a Hugging Face checkpoint; materialize sft_model or pass --model DIR"
        )
    if server == "none":
        import transformers

        model, tokenizer = load_model(model_dir, device)
        about = {
            "engine": "in-process generate (fallback, --server none)",
            "engine_version": f"transformers {transformers.__version__}",
            "model_dir": str(model_dir),
            "device": str(next(model.parameters()).device),
        }
        yield InProcessAnswers(
            model, tokenizer, max_new_tokens, batch_size, settings.profile.evaluation.cpu_threads, about
        )
        return
    plan = plan or server_plan(settings, server, model_dir, device=device)
    launcher = launcher or LocalLauncher(settings.paths.server_logs)
    with serve(plan, launcher, client_config.startup_timeout_seconds) as running:
        client = CompletionsClient(running.url, client_config, settings.eval_api_key)
        about = {
            "engine": plan.engine,
            "engine_version": plan.engine_version,
            "endpoint": running.url,
            "served_model": plan.served_model,
            "model_dir": str(model_dir),
            "weights": plan.weights,
            "hardware": plan.hardware,
            "started_by": "this run",
        }
        yield _served(
            client, settings, plan.served_model, max_new_tokens, concurrency, model_fingerprint(model_dir), about
        )
