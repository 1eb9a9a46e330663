"""`sftc evaluate`: the test split's prompts answered by an OpenAI-compatible server (or in process, the fallback),
action extraction and forward returns, the eval CSV; `--dry-run` prints the serving plan."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from sftc_assets.evaluation.servers import (
    SERVERS,  # requests and the settings only: --help stays light
)
from sftc_core.gpu import check_device
from sftc_core.settings import Settings
from sftc_jobs.commands.outputs import add_force, writing_output


def _months(text: str) -> list[str]:
    months = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in months if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", m)]
    if bad or not months:
        raise argparse.ArgumentTypeError(
            f"expected months written YYYY-MM, comma-separated (e.g. 2012-09,2012-10), got {text!r}"
        )
    return months


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _url(text: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", text):
        raise argparse.ArgumentTypeError(
            f"expected the server's URL, e.g. http://127.0.0.1:8000 (with or without /v1), got {text!r}"
        )
    return text


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate the fine-tuned model on the test split and write the eval CSV",
        description="The test split's prompts through an OpenAI-compatible /v1/completions server (greedy, stop at the "
        "closing action tag), action extraction and forward returns (docs/eval-and-backtest.md); prices from the "
        "profile's price source. Without --endpoint a server is started for the run (the profile's evaluation.server) "
        "and stopped after it. Interrupted, it resumes from the answers staged beside --results.",
    )
    parser.add_argument("--model", type=Path, help="fine-tuned HF checkpoint (default: <data dir>/models/sft)")
    parser.add_argument("--dataset", type=Path, help="hf_splits DatasetDict directory (default: <data dir>/hf_splits)")
    parser.add_argument("--results", type=Path, help="eval CSV to write (required unless --dry-run)")
    parser.add_argument(
        "--endpoint",
        type=_url,
        help="an OpenAI-compatible server already running (default: the profile's evaluation.endpoint)",
    )
    parser.add_argument(
        "--server",
        choices=SERVERS,
        help="the server to start without an endpoint; none = in-process generate, "
        "the fallback (default: the profile's evaluation.server)",
    )
    parser.add_argument(
        "--served-model", help="model name to request when the endpoint serves several (GET /v1/models)"
    )
    parser.add_argument(
        "--concurrency", type=_positive, help="requests in flight (default: the profile's evaluation.concurrency)"
    )
    parser.add_argument("--max-samples", type=_positive, help="evaluate only the first N test theses (in CSV order)")
    parser.add_argument(
        "--batch-size",
        type=_positive,
        help="batch size of --server none (default: the profile's evaluation.batch_size)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=_positive,
        help="max_tokens of each answer (default: the profile's evaluation.max_new_tokens)",
    )
    parser.add_argument(
        "--months", type=_months, help="only theses with as_of_date in these months, e.g. 2012-09,2012-10"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="where a local server or --server none runs: auto (CUDA "
        "when present, else this CPU for a checkpoint within the profile's CPU limit), cpu, cuda, "
        "cuda:N",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the serving plan (engine, weights, parallelism, nodes, commands) and exit",
    )
    add_force(parser)
    parser.set_defaults(func=run_evaluate)


def _plan_text(settings: Settings, server: str, endpoint: str | None, model_dir: Path, device: str) -> str:
    from sftc_assets.evaluation.servers import server_plan

    if endpoint:
        return f"endpoint:    {endpoint} (already running: no server is started)"
    if server == "none":
        return f"no server:   {model_dir} loaded in this process, batched generate (the fallback)"
    port = settings.profile.evaluation.serving.port
    return server_plan(settings, server, model_dir, device=device, port=port).render()


def _device(requested: str, settings: Settings, model_dir: Path) -> str:
    """`--device auto`: CUDA where torch sees it, else this CPU for a checkpoint within the profile's CPU limit (the
    toy); a bigger one is planned on GPU nodes (`sftc evaluate --dry-run` on a CPU node prints the GPU plan)."""
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    compute = settings.profile.compute
    size = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
    size = size or compute.expected_checkpoint_bytes or 0
    return "cpu" if size <= compute.cpu_max_checkpoint_bytes else "cuda"


def run_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    check_device(args.device)
    evaluation = settings.profile.evaluation
    endpoint, server = args.endpoint or evaluation.endpoint, args.server or evaluation.server
    model_dir = args.model or settings.paths.sft_model
    device = _device(args.device, settings, model_dir)
    if args.dry_run:
        print(_plan_text(settings, server, endpoint, model_dir, device))
        return 0
    if args.results is None:
        raise ValueError("--results CSV is required (or --dry-run to print the serving plan)")

    from sftc_assets.evaluation.answers import open_answers
    from sftc_assets.evaluation.completions import EndpointError
    from sftc_assets.evaluation.evaluate import evaluate_to_csv, load_test_records
    from sftc_assets.evaluation.servers import ServerError
    from sftc_core.metrics import classification_metrics
    from sftc_core.progress import reporting
    from sftc_platform.prices import price_source_from_settings

    paths = settings.paths
    dataset = args.dataset or paths.hf_splits
    records = load_test_records(dataset, months=args.months, max_samples=args.max_samples)
    staging = args.results.with_name(f".{args.results.name}.staging.jsonl")
    with writing_output(args, [args.results], inputs=[model_dir, dataset], option="--results") as stamp:
        try:
            answering = open_answers(
                settings,
                server=server,
                endpoint=endpoint,
                model_dir=model_dir,
                device=device,
                max_new_tokens=args.max_new_tokens or evaluation.max_new_tokens,
                batch_size=args.batch_size or evaluation.batch_size,
                concurrency=args.concurrency or evaluation.concurrency,
                served_model=args.served_model or evaluation.served_model,
            )
            with answering as answers, reporting("evaluate", "row") as report:
                frame = evaluate_to_csv(
                    records,
                    answers,
                    price_source_from_settings(settings),
                    settings.sft,
                    args.results,
                    staging=staging,
                    calendar=settings.prices.calendar,
                    on_progress=lambda done, total, resumed: report(done, total, initial=resumed),
                    stamp=stamp,
                )
        except (EndpointError, ServerError) as exc:
            raise RuntimeError(
                f"{exc}; the answers received are staged in {staging}: the same command resumes"
            ) from exc
    figures = classification_metrics(frame["true_action"].to_numpy(object), frame["predicted_action"].to_numpy(object))
    summary = {k: figures[k] for k in ("rows", "parse_rate", "accuracy", "mcc")}
    answered_by = {k: answers.about[k] for k in ("engine", "engine_version") if k in answers.about}
    print(
        json.dumps(
            {
                "results": str(args.results),
                **summary,
                "return_status": frame["return_status"].value_counts().to_dict(),
                "answered_by": answered_by,
            },
            indent=2,
        )
    )
    return 0
