"""Rows/s of the evaluation through `transformers serve` (N requests in flight) against the in-process batched
generate, on the same toy model and test prompts, in one run.

Uses the toy chain's fine-tuned model and test split (`make run` first): `data/models/sft`, `data/hf_splits`.
The server is started once (its start-up is timed apart); then, round after round, the in-process path answers
every test prompt, and the server answers them with each N in flight, so load from other processes on the machine
falls on all alike. Both sides on the profile's CPU threads (1 in the toy profile). Prints rows/s of each, the
ratio served / in-process per round and its median, and the share of rows whose parsed action agrees.

    .venv/bin/python bench/eval_server.py [--rounds 3] [--concurrency 1,4] [--model DIR] [--dataset DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from record import Measurement, add_results_option, record

from sftc_assets.evaluation.answers import InProcessAnswers, ServedAnswers, load_model
from sftc_assets.evaluation.completions import CompletionsClient, Decoding
from sftc_assets.evaluation.evaluate import load_test_records, test_prompts
from sftc_assets.evaluation.servers import LocalLauncher, free_port, serve, transformers_plan
from sftc_core.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,4", help="requests in flight, comma-separated")
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
    local = InProcessAnswers(model, tokenizer, evaluation.max_new_tokens, evaluation.batch_size, evaluation.cpu_threads, {})

    plan = transformers_plan(model_dir, device="cpu", port=free_port(), seed=client_config.seed, cpu_threads=evaluation.cpu_threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as logs, serve(plan, LocalLauncher(logs), client_config.startup_timeout_seconds) as running:
        print(f"{len(prompts)} test prompts, up to {evaluation.max_new_tokens} new tokens, batch {evaluation.batch_size} in process; "
              f"transformers serve {plan.engine_version} up in {time.perf_counter() - started:.1f} s")  # fmt: skip
        client = CompletionsClient(running.url, client_config)
        decoding = client.negotiate_special_tokens(Decoding(plan.served_model, evaluation.max_new_tokens, (settings.sft.target_format.action[1],), client_config.seed))
        ratios: dict[int, list[float]] = {n: [] for n in levels}
        rates: dict[int | None, list[float]] = {n: [] for n in [None, *levels]}  # None: in process
        for round_ in range(1, args.rounds + 1):
            start = time.perf_counter()
            expected = local.answer(prompts)
            local_rate = len(prompts) / (time.perf_counter() - start)
            rates[None].append(local_rate)
            line = [f"round {round_}: in process {local_rate:6.1f} rows/s"]
            for n in levels:
                served = ServedAnswers(client, decoding, n, "bench", {})
                start = time.perf_counter()
                texts = served.answer(prompts, staging=None)
                rate = len(prompts) / (time.perf_counter() - start)
                rates[n].append(rate)
                ratios[n].append(rate / local_rate)
                agree = sum(parse(a) == parse(b, served.tags_stripped) for a, b in zip(expected, texts)) / len(prompts)
                line.append(f"served N={n} {rate:6.1f} rows/s (x{rate / local_rate:.2f}, actions agree {agree:.0%})")
            print("; ".join(line))
    for n, values in ratios.items():
        print(f"served / in process, N={n}: median x{statistics.median(values):.2f} over {len(values)} rounds ({', '.join(f'{v:.2f}' for v in values)})")
    local_median = statistics.median(rates[None])
    record("eval_server", [
        Measurement(f"served rows/s, {n} in flight", statistics.median(rates[n]), "in-process generate", local_median, "rows/s (median of rounds)")
        for n in levels
    ], args.results)  # fmt: skip


if __name__ == "__main__":
    main()
