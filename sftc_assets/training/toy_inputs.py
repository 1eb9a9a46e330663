"""The toy's inputs outside the chain: NeMo JSONL pairs of the sample theses (real prices, the project's own prompt
and target format) and the toy DeepSeek-V3 in BF16 with its tokenizer trained on them. For the benches and
`sftc gpu-check`, which need the toy model and its data on a node where the chain has not run. Its weights stay
random: the GPU steps prove the GPU path, and the base's pretraining (base_checkpoint's CPU work) would take most of
toy_inputs' time limit on a busy node.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from sftc_assets.checkpoints.toy_model import corpus_texts_from, make_toy_checkpoint
from sftc_assets.sft_data.prompts import build_example, render_prompt
from sftc_assets.theses.sample_corpus import month_theses, sample_ticker_table
from sftc_core.configs import ProfileConfig, SftConfig
from sftc_core.io import atomic_write_jsonl
from sftc_core.months import months_between
from sftc_core.nemo_format import NEMO_FILES


@dataclass(frozen=True)
class ToyInputs:
    model_dir: Path  # the BF16 toy checkpoint with its tokenizer
    data_dir: Path  # training.jsonl, validation.jsonl, test.jsonl

    @classmethod
    def at(cls, root: Path) -> ToyInputs:
        return cls(Path(root) / "bf16", Path(root) / "nemo_jsonl")


def month_pairs(profile: ProfileConfig, sft: SftConfig, months: list[str]) -> list[dict]:
    """NeMo pairs ({"input", "output"}) of the profile's sample theses in `months`, every ticker, in order."""
    tables = {ticker: sample_ticker_table(ticker, profile.corpus.horizon_days) for ticker in profile.corpus.tickers}
    rows = []
    for month in months:
        for ticker, table in tables.items():
            for thesis in month_theses(ticker, table, month, profile.corpus):
                example = build_example({**dataclasses.asdict(thesis), "support": list(thesis.support)}, sft)
                rows.append(
                    {"input": render_prompt(example["instruction"], example["input"], sft), "output": example["output"]}
                )
    return rows


def write_pairs(data_dir: Path, profile: ProfileConfig, sft: SftConfig, months: dict[str, list[str]]) -> dict[str, int]:
    """One NeMo JSONL file per split ("train", "validation", "test") from the months given for it."""
    return {
        split: atomic_write_jsonl(Path(data_dir) / NEMO_FILES[split], month_pairs(profile, sft, split_months))
        for split, split_months in months.items()
    }


def profile_months(profile: ProfileConfig, validation_months: int = 2) -> dict[str, list[str]]:
    """The toy profile's windows: training up to dates.train_end, the next months for validation, the test window."""
    dates = profile.dates
    train = months_between(f"{dates.train_start:%Y-%m}", f"{dates.train_end:%Y-%m}")
    after = months_between(train[-1], profile.partitions.end)[1 : validation_months + 1]
    return {
        "train": train,
        "validation": after,
        "test": months_between(f"{dates.test_start:%Y-%m}", f"{dates.test_end:%Y-%m}"),
    }


def build_toy_inputs(root: Path, profile: ProfileConfig, sft: SftConfig) -> dict:
    """The toy's NeMo JSONL under root/nemo_jsonl and its BF16 checkpoint under root/bf16 (`ToyInputs.at(root)`; the
    tokenizer trained on the training pairs); returns the pairs per split and the checkpoint's summary."""
    toy = ToyInputs.at(root)
    pairs = write_pairs(toy.data_dir, profile, sft, profile_months(profile))
    summary = make_toy_checkpoint(
        toy.model_dir,
        corpus_texts_from(toy.data_dir / NEMO_FILES["train"]),
        seed=profile.model.seed,
        vocab_size=profile.model.vocab_size,
    )
    return {"pairs": pairs, "checkpoint": summary}
