"""The real vLLM (its CPU build, .venv-vllm) serving the toy DeepSeek-V3 as the toy profile does: `sftc evaluate`
starts it from the plan (the GPU plan's command builder, less the GPUs), waits for /health, answers a month of test
theses through the completions client and stops it. The checkpoint is the release's layout as the conversion leaves
it, MTP layer included, which vLLM skips without speculative decoding.

The model is the untrained toy (random weights, seed 0): its greedy answers are not trading actions, but both sides
decode the same tokens, so the raw texts are compared against the in-process greedy path (float32 both sides). Without
the CPU command's `-rotary_embedding` (servers.CPU_COMPILATION) 2 of these 8 answers parted, and a trained toy's
answers mostly did.
"""

from __future__ import annotations

import json
import re
import socket

import pytest
from test_eval_serving import TICKERS, prompts, records, save_splits

from sftc_assets.checkpoints.convert import convert_fp8_checkpoint
from sftc_assets.checkpoints.safetensors_io import load_weight_map
from sftc_assets.checkpoints.toy_model import make_toy_checkpoint
from sftc_assets.evaluation.results import read_eval_csv
from sftc_assets.evaluation.servers import installed_vllm
from sftc_core.settings import load_settings
from sftc_jobs.cli import main as sftc

pytestmark = pytest.mark.vllm

NEW_TOKENS = 12


@pytest.fixture(scope="module")
def vllm_version() -> str:
    installed = installed_vllm(load_settings().vllm_python)
    if installed is None:
        pytest.skip(f"no vLLM at {load_settings().vllm_python}: make .venv-vllm (make test does), or SFTC_VLLM_PYTHON")
    return installed[1]


@pytest.fixture(scope="module")
def release_toy(tmp_path_factory):
    """The toy in the FP8 release layout, converted to BF16 as the chain does: MLA 512 + 64, grouped routing, MTP."""
    root = tmp_path_factory.mktemp("release")
    frame = records(8)
    make_toy_checkpoint(root / "fp8", [p + o for p, o in zip(prompts(frame), frame["output"])] * 5, seed=0, fp8=True)
    convert_fp8_checkpoint(root / "fp8", root / "bf16", device="cpu", progress=False)
    return root / "bf16"


@pytest.mark.timeout(600)
def test_vllm_serves_the_toy_and_answers_a_month_as_the_in_process_greedy_path(
    vllm_version, release_toy, data_dir, capsys
):
    assert any(name.startswith("model.layers.3.") for name in load_weight_map(release_toy))  # the MTP layer is there
    save_splits(data_dir / "splits", records(8))
    common = ["--dataset", str(data_dir / "splits"), "--model", str(release_toy), "--months", "2012-10",
              "--max-new-tokens", str(NEW_TOKENS), "--device", "cpu"]  # fmt: skip
    assert sftc(["evaluate", "--server", "vllm", "--results", str(data_dir / "vllm.csv"), *common]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["answered_by"] == {"engine": "vllm", "engine_version": vllm_version} and summary["rows"] == 8
    assert sftc(["evaluate", "--server", "none", "--results", str(data_dir / "local.csv"), *common]) == 0

    served, local = read_eval_csv(data_dir / "vllm.csv"), read_eval_csv(data_dir / "local.csv")
    assert served["id"].tolist() == local["id"].tolist() and set(served["ticker"]) == set(TICKERS)
    assert served["raw_output"].str.len().min() > 0
    same = (served["raw_output"] == local["raw_output"]).mean()
    print(f"vLLM {vllm_version} (float32) against in-process greedy (float32): {same:.0%} of {len(served)} identical")
    assert same >= 7 / 8  # an answer may part where two logits of the untrained model tie to rounding (8 of 8 measured)

    (log,) = (data_dir / "logs" / "servers").glob("vllm-*.log")  # the server's own log
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "Resolved architecture: DeepseekV3ForCausalLM" in text and "Using CPU_MLA backend" in text
    assert not re.search(r"layers\.3\.\S+ (is )?(not|un)", text)  # nothing said of the MTP tensors it skipped
    port = int(log.stem.split("-")[1])
    with pytest.raises(ConnectionRefusedError):  # stopped after the run: nothing answers on its port
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
