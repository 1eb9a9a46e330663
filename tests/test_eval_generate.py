"""generate_greedy on a tiny DeepSeek-V3 (the project's toy checkpoint): batching, EOS, special tokens."""

from __future__ import annotations

import pytest
import torch

from sftc_assets.checkpoints.toy_model import make_toy_checkpoint
from sftc_assets.training.generate import generate_greedy

PROMPTS = [
    "### Instruction:\nTicker: AAPL\n\n### Response:\n",
    "Ticker: MSFT",
    "x",
    "### Input:\nTicker: IBM\nAs of: 2012-10-01\nHorizon: 5 trading days\nFacts:\n- Close 190\n\n### Response:\n",
    "Ticker: GOOG <action>",
]
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    corpus = [p + "<reasoning>up</reasoning><action>BUY</action>" for p in PROMPTS] * 20
    path = tmp_path_factory.mktemp("toy") / "model"
    make_toy_checkpoint(path, corpus, seed=1, vocab_size=400)
    return path


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def _new_ids(model, tokenizer, prompt: str, count: int) -> list[int]:
    """Reference: one prompt alone, no padding, greedy by hand with argmax over the full forward pass."""
    ids = tokenizer(prompt)["input_ids"]
    out = []
    with torch.inference_mode():
        for _ in range(count):
            logits = model(torch.tensor([ids + out])).logits[0, -1]
            out.append(int(logits.argmax()))
    return out


def test_batched_left_padded_greedy_matches_one_prompt_at_a_time(toy_dir):
    model, tokenizer = _load(toy_dir)
    model.train()
    batched = generate_greedy(model, tokenizer, PROMPTS, NEW_TOKENS, batch_size=3)
    assert model.training  # put back as it was
    assert batched == generate_greedy(
        model, tokenizer, PROMPTS, NEW_TOKENS, batch_size=5
    )  # deterministic, any batching
    model.eval()
    for prompt, text in zip(PROMPTS, batched):
        reference = _new_ids(model, tokenizer, prompt, NEW_TOKENS)
        eos = tokenizer.eos_token_id
        reference = reference[: reference.index(eos)] if eos in reference else reference
        assert text == tokenizer.decode(reference, skip_special_tokens=False)  # only the new text


def test_generation_stops_at_eos_and_cuts_it(toy_dir):
    model, tokenizer = _load(toy_dir)
    prompt = PROMPTS[0]
    ids = _new_ids(model, tokenizer, prompt, NEW_TOKENS)
    stop_at = next(i for i in range(1, NEW_TOKENS) if ids[i] not in ids[:i])  # a token not generated before it
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(ids[stop_at])  # make it the end of sequence
    (text,) = generate_greedy(model, tokenizer, [prompt], NEW_TOKENS, batch_size=1)
    assert text == tokenizer.decode(ids[:stop_at], skip_special_tokens=False)


def test_special_tokens_of_the_format_are_kept(toy_dir):
    model, tokenizer = _load(toy_dir)
    prompt = PROMPTS[1]
    first = _new_ids(model, tokenizer, prompt, 1)[0]
    tokenizer.add_tokens(["<action>"], special_tokens=True)
    model.resize_token_embeddings(len(tokenizer))
    action_id = tokenizer.convert_tokens_to_ids("<action>")
    with torch.no_grad():
        hidden_logit = model(torch.tensor([tokenizer(prompt)["input_ids"]])).logits[0, -1, first]
        assert hidden_logit > 0  # so a scaled copy of its row wins the argmax
        model.lm_head.weight[action_id] = model.lm_head.weight[first] * 1.5
    (text,) = generate_greedy(model, tokenizer, [prompt], 3, batch_size=1)
    assert text.startswith("<action>")


def test_empty_and_bad_arguments():
    assert generate_greedy(None, None, [], 5, 2) == []
    with pytest.raises(ValueError, match="max_new_tokens and batch_size must be >= 1"):
        generate_greedy(None, None, ["x"], 0, 2)


@pytest.mark.gpu
def test_load_model_on_cuda_generates_deterministically(toy_dir):
    from sftc_assets.evaluation.answers import load_model

    model, tokenizer = load_model(toy_dir, "cuda")
    assert next(model.parameters()).device.type == "cuda" and next(model.parameters()).dtype == torch.bfloat16
    first = generate_greedy(model, tokenizer, PROMPTS, NEW_TOKENS, batch_size=5)
    assert len(first) == len(PROMPTS) and first == generate_greedy(model, tokenizer, PROMPTS, NEW_TOKENS, batch_size=5)
