"""The toy base's pretraining: it reads the training window's prompts and nothing else (a planted late record stops it,
an answer never reaches it), it learns them (the loss falls from a random model's), and it stays deterministic."""

from __future__ import annotations

import datetime as dt
import math

import pytest
import torch
from datasets import Dataset, DatasetDict, load_from_disk
from safetensors.torch import load_file
from training_hf_helpers import write_hf_splits

from sftc_assets.checkpoints import pretrain
from sftc_assets.checkpoints.toy_model import make_toy_base, make_toy_checkpoint
from sftc_assets.sft_data.nemo_export import training_texts
from sftc_assets.sft_data.prompts import render_prompt
from sftc_core.configs import PretrainingConfig, load_profile, load_sft_config

SFT = load_sft_config()
# write_hf_splits dates its 24 records a day apart from 2010-01-04: the train split is 2010-01-04..2010-01-23.
WINDOW = (dt.date(2010, 1, 1), dt.date(2010, 1, 31))
SHORT = PretrainingConfig(steps=30, batch_size=4, sequence_length=32, learning_rate=1e-2, warmup_steps=3, cpu_threads=1)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return write_hf_splits(tmp_path_factory.mktemp("splits") / "hf_splits", train=20, validation=4)


def test_the_pretraining_reads_the_prompt_side_of_the_train_split_and_no_answer(splits):
    texts = pretrain.pretraining_texts(splits, SFT, *WINDOW)
    train = load_from_disk(str(splits))["train"]
    assert texts[0::2] == [render_prompt(r["instruction"], r["input"], SFT) for r in train]
    first = train[0]
    assert texts[1] == (
        f"<thesis><ticker>{first['ticker']}</ticker><as_of_date>{first['as_of_date']}</as_of_date><support>"
        + "".join(f"<point>{p}</point>" for p in first["support"])
        + "</support><horizon_days>5</horizon_days></thesis>"
    )
    text = "\n".join(texts)
    for record in train:
        assert (
            record["output"] not in text
            and record["reasoning"] not in text
            and record["action"] not in text.replace("STRONG_BUY, BUY, HOLD, SELL, STRONG_SELL", "")
        )
    # the answer's own parts stay the fine-tune's to teach (<support> is also the corpus's XML element for the facts)
    assert not any(tag in text for tag in ("<reasoning>", "</reasoning>", "<action>", "</action>"))


def test_a_field_the_prompt_leaves_out_on_purpose_is_not_pretrained_on_either(splits):
    input_template = "Ticker: {ticker}\nAs of: {as_of_date}\nHorizon: {horizon_days} trading days"
    prompt = SFT.prompt.model_copy(update={"input_template": input_template, "omit_fields": {"facts": "a test"}})
    texts = pretrain.pretraining_texts(splits, SFT.model_copy(update={"prompt": prompt}), *WINDOW)
    assert (
        texts[1].startswith("<thesis><ticker>")
        and "<support>" not in texts[1]
        and "<point>" not in "".join(texts[1::2])
    )


@pytest.mark.parametrize("late", [dt.date(2010, 2, 1), dt.date(2009, 12, 31)])
def test_a_record_planted_outside_the_training_window_stops_the_pretraining(splits, tmp_path, late):
    """A train split holding a record dated outside the window is never read: the build stops, naming it."""
    dataset = load_from_disk(str(splits))
    planted = dict(dataset["train"][0]) | {
        "id": "planted-late",
        "as_of_date": late.isoformat(),
        "input": "Ticker: LATE\nFacts:\n- from the future",
    }
    rows = [*dataset["train"].to_list(), planted]
    path = tmp_path / "planted"
    parts = {"train": Dataset.from_list(rows, features=dataset["train"].features)}
    DatasetDict({**parts, "validation": dataset["validation"], "test": dataset["test"]}).save_to_disk(str(path))
    window = r"1 record\(s\) dated outside the training window 2010-01-01..2010-01-31"
    with pytest.raises(ValueError, match=rf"{window} \(first: planted-late of {late}\)"):
        pretrain.pretraining_texts(path, SFT, *WINDOW)
    # without the planted record the same split is read whole: a prompt and its XML per record
    assert len(pretrain.pretraining_texts(splits, SFT, *WINDOW)) == 2 * 20


def test_the_base_learns_the_prompts_and_the_same_inputs_give_the_same_bytes(splits, tmp_path):
    profile = load_profile("toy")
    model = profile.model.model_copy(update={"pretraining": SHORT})
    prompts, texts = pretrain.pretraining_texts(splits, SFT, *WINDOW), training_texts(splits, SFT)
    summary = make_toy_base(tmp_path / "a", texts, prompts, model, fp8=False)
    pretrained = summary["pretraining"]
    assert pretrained["steps"] == 30 and pretrained["documents"] == 2 * 20 and pretrained["tokens"] == 30 * 4 * 32
    # a random model's loss is about ln(vocab); thirty short steps already take it well under
    assert pretrained["initial_loss"] == pytest.approx(math.log(model.vocab_size), rel=0.05)
    assert pretrained["final_loss"] < 0.8 * pretrained["initial_loss"]
    make_toy_base(tmp_path / "b", texts, prompts, model, fp8=False)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    make_toy_checkpoint(tmp_path / "random", texts, seed=model.seed)
    random, trained = (
        load_file(tmp_path / "random" / "model.safetensors"),
        load_file(tmp_path / "a" / "model.safetensors"),
    )
    assert set(random) == set(trained) and not torch.equal(
        random["model.embed_tokens.weight"], trained["model.embed_tokens.weight"]
    )
    assert (tmp_path / "random" / "tokenizer.json").read_bytes() == (tmp_path / "a" / "tokenizer.json").read_bytes()


def test_packing_cuts_the_stream_into_whole_rows_and_refuses_too_little_text():
    rows = pretrain.packed_sequences([[0, 5, 6, 7], [0, 8, 9], [0, 10]], 4)
    assert rows.tolist() == [[0, 5, 6, 7], [0, 8, 9, 0]]  # the tail [10] shorter than a row is left out
    with pytest.raises(
        ValueError, match=r"3 pretraining tokens do not fill one sequence of 4; lower model.pretraining.sequence_length"
    ):
        pretrain.packed_sequences([[0, 1, 2]], 4)
