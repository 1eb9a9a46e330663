"""The toy profile learns: the real toy chain's data and checkpoint, the toy profile's training section unchanged.

Slow (a few CPU minutes): the sample corpus from real prices -> records -> time splits -> NeMo JSONL, the toy
DeepSeek-V3 in FP8 converted to BF16 as the chain does, then `sftc train`. The issue's learning figures must hold:
validation loss well below its start, and >= 90% of greedy validation outputs with a parseable action.
"""

from __future__ import annotations

import csv
import json

import pytest

from sftc_assets.checkpoints.convert import convert_fp8_checkpoint
from sftc_assets.checkpoints.toy_model import corpus_texts_from, make_toy_checkpoint
from sftc_assets.sft_data.nemo_export import NEMO_FILES, export_nemo
from sftc_assets.sft_data.splits import build_dataset
from sftc_assets.theses.parser import parse_corpus, write_jsonl_outputs
from sftc_assets.theses.sample_corpus import write_sample_corpus
from sftc_core.configs import load_sft_config
from sftc_core.settings import load_settings
from sftc_jobs.cli import main as sftc_main

pytestmark = pytest.mark.slow


def test_toy_profile_training_learns_the_format(data_dir, capsys):
    settings, sft = load_settings(), load_sft_config()
    profile = settings.profile
    write_sample_corpus(data_dir / "raw_xml", profile.partitions.start, profile.partitions.end, profile.corpus)
    write_jsonl_outputs(parse_corpus(data_dir / "raw_xml"), data_dir / "jsonl" / "all.jsonl", data_dir / "rejects.jsonl")
    bounds = (settings.train_start_date, settings.train_end_date, settings.test_start_date, settings.test_end_date)
    build_dataset(data_dir / "jsonl", data_dir / "hf_splits", sft, date_bounds=bounds)
    export_nemo(data_dir / "hf_splits", data_dir / "nemo_jsonl", sft)
    texts = corpus_texts_from(data_dir / "nemo_jsonl" / NEMO_FILES["train"])
    make_toy_checkpoint(data_dir / "checkpoints" / "base_fp8", texts, seed=profile.model.seed, fp8=True, vocab_size=profile.model.vocab_size)
    convert_fp8_checkpoint(data_dir / "checkpoints" / "base_fp8", data_dir / "checkpoints" / "bf16", device="cpu", progress=False)

    assert sftc_main(["train"]) == 0  # every default: the profile's training section, data/ paths
    metrics = json.loads(capsys.readouterr().out)
    print({k: metrics[k] for k in ("train_examples", "initial_val_loss", "final_val_loss", "parse_rate", "tokens_per_s", "train_seconds")})
    assert metrics["train_examples"] > 800 and metrics["steps"] == profile.training.max_steps
    assert metrics["final_val_loss"] < 0.2 * metrics["initial_val_loss"]
    assert metrics["parse_checked"] == min(profile.training.parse_check_samples, metrics["val_examples"])
    assert metrics["parse_rate"] >= 0.9
    with open(data_dir / "models" / "sft" / "val.csv", newline="") as fh:
        val_losses = [float(row["val_loss"]) for row in csv.DictReader(fh)]
    assert val_losses[-1] < val_losses[1] < val_losses[0]  # still falling after the first evaluation
