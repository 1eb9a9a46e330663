"""The toy chain's inputs up to the BF16 checkpoint, built with the chain's own functions in a test's data dir:
the sample corpus from real prices -> records -> time splits -> NeMo JSONL -> the toy DeepSeek-V3 in FP8,
converted to BF16 as the chain does. `sftc train` (every default) then fine-tunes it."""

from __future__ import annotations

from pathlib import Path

from sftc_assets.checkpoints.convert import convert_fp8_checkpoint
from sftc_assets.checkpoints.pretrain import pretraining_texts
from sftc_assets.checkpoints.toy_model import make_toy_base
from sftc_assets.sft_data.nemo_export import export_nemo, training_texts
from sftc_assets.sft_data.splits import build_dataset
from sftc_assets.theses.parser import parse_corpus, write_jsonl_outputs
from sftc_assets.theses.sample_corpus import write_sample_corpus
from sftc_core.configs import load_sft_config
from sftc_core.settings import Settings


def build_toy_chain_until_bf16(data_dir: Path, settings: Settings) -> None:
    sft, profile = load_sft_config(), settings.profile
    write_sample_corpus(data_dir / "raw_xml", profile.partitions.start, profile.partitions.end, profile.corpus)
    write_jsonl_outputs(
        parse_corpus(data_dir / "raw_xml"), data_dir / "jsonl" / "all.jsonl", data_dir / "rejects.jsonl"
    )
    bounds = (settings.train_start_date, settings.train_end_date, settings.test_start_date, settings.test_end_date)
    build_dataset(data_dir / "jsonl", data_dir / "hf_splits", sft, date_bounds=bounds)
    export_nemo(data_dir / "hf_splits", data_dir / "nemo_jsonl", sft)
    prompts = pretraining_texts(data_dir / "hf_splits", sft, settings.train_start_date, settings.train_end_date)
    texts = training_texts(data_dir / "hf_splits", sft)
    make_toy_base(data_dir / "checkpoints" / "base_fp8", texts, prompts, profile.model)
    convert_fp8_checkpoint(
        data_dir / "checkpoints" / "base_fp8", data_dir / "checkpoints" / "bf16", device="cpu", progress=False
    )
