"""The toy chain's fine-tuned model evaluated both ways: through vLLM's CPU build (the default server) and in
process (`--server none`). Slow (a few CPU minutes: the chain's data, the toy fine-tune, two evaluations of the test
window). Needs the vLLM environment (.venv-vllm).

The served path must give the in-process greedy path's action on at least 95% of the test theses. Both sides decode
greedily in float32 (vLLM's --dtype float32 from the shared command builder; the fallback loads float32 on a CPU), so
the logits agree to rounding; they differ in how they get there: vLLM batches the requests in flight through its own
DeepSeek-V3 (MLA with the latent cache, its own MoE routing kernels) while the fallback batches left-padded prompts
through transformers', and vLLM stops at </action> while the fallback stops at EOS (after </action> in the trained
format). vLLM keeps the special tokens (skip_special_tokens=false), so the tags are in both outputs.
"""

from __future__ import annotations

import json

import pytest
from toy_chain_helpers import build_toy_chain_until_bf16

from sftc_assets.evaluation.results import EVAL_COLUMNS, read_eval_csv
from sftc_assets.evaluation.servers import installed_vllm
from sftc_core.settings import load_settings
from sftc_jobs.cli import main as sftc

pytestmark = pytest.mark.slow


@pytest.mark.timeout(1800)
def test_served_toy_eval_matches_the_in_process_greedy_path(data_dir, capsys):
    settings = load_settings()
    if installed_vllm(settings.vllm_python) is None:
        pytest.skip(f"no vLLM at {settings.vllm_python}: make .venv-vllm (or set SFTC_VLLM_PYTHON)")
    build_toy_chain_until_bf16(data_dir, settings)
    assert sftc(["train"]) == 0
    capsys.readouterr()
    assert sftc(["evaluate", "--results", str(data_dir / "served.csv")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["answered_by"] == {"engine": "vllm", "engine_version": installed_vllm(settings.vllm_python)[1]}
    assert sftc(["evaluate", "--server", "none", "--results", str(data_dir / "in_process.csv")]) == 0
    capsys.readouterr()

    assert (data_dir / "served.csv").read_text(encoding="utf-8").splitlines()[0] == ",".join(EVAL_COLUMNS)
    served, local = (
        read_eval_csv(data_dir / "served.csv"),
        read_eval_csv(data_dir / "in_process.csv"),
    )  # the spec's reader
    assert served["id"].tolist() == local["id"].tolist() and len(served) >= 100
    agree = (served["predicted_action"] == local["predicted_action"]).mean()
    print(
        f"{len(served)} test theses: actions agree on {agree:.1%}; parse rate served {served['parse_ok'].mean():.1%}, "
        f"in process {local['parse_ok'].mean():.1%}"
    )
    assert agree >= 0.95
    assert served["parse_ok"].mean() >= 0.9
    assert served["raw_output"].str.contains("<action>").mean() >= 0.9  # vLLM keeps the tags
    assert local["raw_output"].str.contains("<action>").all()
