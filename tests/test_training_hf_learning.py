"""The toy profile learns: the real toy chain's data and checkpoint, the toy profile's training section unchanged.

Slow (a few CPU minutes): the sample corpus from real prices -> records -> time splits -> NeMo JSONL, the toy
DeepSeek-V3 in FP8 converted to BF16 as the chain does, then `sftc train`. The issue's learning figures must hold:
validation loss well below its start, and >= 90% of greedy validation outputs with a parseable action.
"""

from __future__ import annotations

import csv
import json

import pytest
from toy_chain_helpers import build_toy_chain_until_bf16

from sftc_core.settings import load_settings
from sftc_jobs.cli import main as sftc_main

pytestmark = pytest.mark.slow


def test_toy_profile_training_learns_the_format(data_dir, capsys):
    settings = load_settings()
    profile = settings.profile
    build_toy_chain_until_bf16(data_dir, settings)

    assert sftc_main(["train"]) == 0  # every default: the profile's training section, data/ paths
    metrics = json.loads(capsys.readouterr().out)
    print(
        {
            k: metrics[k]
            for k in (
                "train_examples",
                "initial_val_loss",
                "final_val_loss",
                "parse_rate",
                "tokens_per_s",
                "train_seconds",
            )
        }
    )
    assert metrics["train_examples"] > 800 and metrics["steps"] == profile.training.max_steps
    assert metrics["final_val_loss"] < 0.2 * metrics["initial_val_loss"]
    assert metrics["parse_checked"] == min(profile.training.parse_check_samples, metrics["val_examples"])
    assert metrics["parse_rate"] >= 0.9
    with open(data_dir / "models" / "sft" / "val.csv", newline="") as fh:
        val_losses = [float(row["val_loss"]) for row in csv.DictReader(fh)]
    assert val_losses[-1] < val_losses[1] < val_losses[0]  # still falling after the first evaluation
