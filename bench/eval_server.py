"""Rows/s of the evaluation through vLLM's CPU build (the toy's server) and through `transformers serve` (the fallback),
N requests in flight, against the in-process batched generate, on the same toy model and test prompts, in one run.

Uses the toy chain's fine-tuned model and test split (`make run` first): `data/models/sft`, `data/hf_splits`. Both
servers are started once (their start-up is timed apart), from the same plans the evaluation uses
(servers.server_plan); then, round after round, the in-process path answers every test prompt, and each server answers
them with each N in flight, so load from other processes on the machine falls on all alike. All on the profile's CPU
threads (1 in the toy profile), float32. Prints rows/s of each, the ratio served / in-process per round and its
median, and the share of rows whose parsed action agrees with the in-process one. Goal: vLLM at least as fast.

    .venv/bin/python bench/eval_server.py [--rounds 3] [--concurrency 4,32] [--model DIR] [--dataset DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from record import Measurement, add_results_option, record

from sftc_assets.evaluation.answers import InProcessAnswers, ServedAnswers, load_model
from sftc_assets.evaluation.completions import CompletionsClient, Decoding
from sftc_assets.evaluation.evaluate import load_test_records, test_prompts
from sftc_assets.evaluation.servers import LocalLauncher, serve, server_plan
from sftc_core.settings import load_settings

ENGINES = ("vllm", "transformers")
GOALS = {"vllm": ">= 1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="4,32", help="requests in flight, comma-separated")
    parser.add_argument("--model", type=Path, help="default: <data dir>/models/sft")
    parser.add_argument("--dataset", type=Path, help="default: <data dir>/hf_splits")
    add_results_option(parser)
    args = parser.parse_args()
    settings = load_settings()
    evaluation, client_config = settings.profile.evaluation, settings.eval_config.client
    model_dir, dataset = args.model or settings.paths.sft_model, args.dataset or settings.paths.hf_splits
    if not (model_dir / "config.json").is_file() or not dataset.is_dir():
        raise SystemExit(f"needs the toy chain's {model_dir} and {dataset}: run `make run` first")
    prompts = test_prompts(load_test_records(dataset), settings.sft)
    parse = settings.sft.target_format.parse_action
    levels = [int(n) for n in args.concurrency.split(",")]
    model, tokenizer = load_model(model_dir, "cpu")
    local = InProcessAnswers(
        model, tokenizer, evaluation.max_new_tokens, evaluation.batch_size, evaluation.cpu_threads, {}
    )
    stop = (settings.sft.target_format.action[1],)

    with tempfile.TemporaryDirectory() as logs, contextlib.ExitStack() as stack:
        decodings: dict[str, tuple[CompletionsClient, Decoding]] = {}
        for engine in ENGINES:
            plan = server_plan(settings, engine, model_dir, device="cpu")
            started = time.perf_counter()
            running = stack.enter_context(serve(plan, LocalLauncher(logs), client_config.startup_timeout_seconds))
            print(f"{engine} {plan.engine_version} up in {time.perf_counter() - started:.1f} s")
            client = CompletionsClient(running.url, client_config)
            decoding = Decoding(plan.served_model, evaluation.max_new_tokens, stop, client_config.seed)
            decodings[engine] = client, client.negotiate_special_tokens(decoding)
        print(
            f"{len(prompts)} test prompts, up to {evaluation.max_new_tokens} new tokens, "
            f"batch {evaluation.batch_size} in process"
        )
        rates: dict[tuple[str, int] | None, list[float]] = {None: [], **{(e, n): [] for e in ENGINES for n in levels}}
        for round_ in range(1, args.rounds + 1):
            start = time.perf_counter()
            expected = local.answer(prompts)
            local_rate = len(prompts) / (time.perf_counter() - start)
            rates[None].append(local_rate)
            line = [f"round {round_}: in process {local_rate:6.1f} rows/s"]
            for engine, (client, decoding) in decodings.items():
                for n in levels:
                    served = ServedAnswers(client, decoding, n, "bench", {})
                    start = time.perf_counter()
                    texts = served.answer(prompts, staging=None)
                    rate = len(prompts) / (time.perf_counter() - start)
                    rates[engine, n].append(rate)
                    agree = sum(parse(a) == parse(b, served.tags_stripped) for a, b in zip(expected, texts))
                    line.append(
                        f"{engine} N={n} {rate:6.1f} rows/s (x{rate / local_rate:.2f}, "
                        f"actions agree {agree / len(prompts):.0%})"
                    )
            print("; ".join(line))
    local_median = statistics.median(rates[None])
    for (engine, n), values in ((k, v) for k, v in rates.items() if k is not None):
        ratios = ", ".join(f"{v / r:.2f}" for v, r in zip(values, rates[None]))
        print(f"{engine} / in process, N={n}: median x{statistics.median(values) / local_median:.2f} ({ratios})")
    record(
        "eval_server",
        [
            Measurement(
                f"{engine} rows/s, {n} in flight",
                statistics.median(rates[engine, n]),
                "in-process generate",
                local_median,
                "rows/s (median of rounds)",
                GOALS.get(engine, ""),
            )
            for engine in ENGINES
            for n in levels
        ],
        args.results,
    )


if __name__ == "__main__":
    main()
