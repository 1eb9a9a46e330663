"""The converted toy checkpoint read by the NeMo environment's transformers (4.57, as NeMo's importer reads it):
config, tokenizer (no token_type_ids), per-expert weights with nothing missing, and generation."""

from __future__ import annotations

import json
import subprocess

import pytest

from sftc_assets.checkpoints.convert import convert_fp8_checkpoint
from sftc_assets.checkpoints.mtp import mtp_prefixes
from sftc_assets.checkpoints.toy_model import make_toy_checkpoint
from sftc_core.launch import entry_env
from sftc_core.settings import load_settings

pytestmark = pytest.mark.nemo

SCRIPT = """
import json, sys, torch, transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
config = AutoConfig.from_pretrained(path)
tokenizer = AutoTokenizer.from_pretrained(path)
model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
inputs = tokenizer(["Ticker: AAPL"], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
print(json.dumps({"version": transformers.__version__, "model_type": config.model_type, "inputs": sorted(inputs),
                  "missing": info["missing_keys"], "unexpected": info["unexpected_keys"],
                  "new_tokens": out.shape[1] - inputs["input_ids"].shape[1]}))
"""


def test_nemo_environment_loads_the_converted_toy(tmp_path):
    python = load_settings().nemo_python
    if not python.is_file():
        pytest.skip(f"{python}: no NeMo environment (make .venv-nemo)")
    make_toy_checkpoint(
        tmp_path / "fp8", ["Ticker: AAPL <action>BUY</action>", "Ticker: IBM <action>SELL</action>"] * 10, fp8=True
    )
    convert_fp8_checkpoint(tmp_path / "fp8", tmp_path / "bf16", device="cpu", progress=False)
    done = subprocess.run(
        [str(python), "-c", SCRIPT, str(tmp_path / "bf16")],
        env=entry_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["version"].startswith("4.") and result["model_type"] == "deepseek_v3"
    assert result["inputs"] == ["attention_mask", "input_ids"]
    # The release's MTP layer (model.layers.<num_hidden_layers>.*) is converted but not built by transformers: it is
    # left unread, every other tensor loads, and the model generates.
    mtp = tuple(mtp_prefixes(json.loads((tmp_path / "bf16" / "config.json").read_text())))
    assert result["missing"] == [] and result["new_tokens"] == 4
    assert result["unexpected"] and all(name.startswith(mtp) for name in result["unexpected"]), result["unexpected"]
