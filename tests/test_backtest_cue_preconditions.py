"""What a failed planted-cue check can name: whether the training pairs held the desk note in their prompts, and
whether the note points to their targets' actions more often than chance (sftc_assets/backtest/cue_preconditions.py).
The NeMo JSONL is written by the export's own functions from thesis records with the corpus's desk notes."""

from __future__ import annotations

import random

from backtest_helpers import cued_records, write_training_pairs

from sftc_assets.backtest.cue_preconditions import LABELS_KEPT, REACHES_PROMPTS, data_preconditions, training_cues
from sftc_core.checks import FAIL, NOT_CHECKED, PASS
from sftc_core.configs import PromptConfig, load_sft_config

SFT = load_sft_config()


def _preconditions(nemo_dir, test=None) -> dict:
    return {check.name: check for check in data_preconditions(training_cues(nemo_dir, SFT.target_format), test)}


def test_notes_in_the_prompts_that_point_to_the_labels_hold(tmp_path):
    records = cued_records()
    write_training_pairs(tmp_path, records, SFT)
    noted = sum(1 for r in records if len(r["support"]) > 1)
    checks = _preconditions(tmp_path, test=(0.78, 64))
    assert checks[REACHES_PROMPTS].status == PASS
    said = f"{noted} of the {noted} training pairs whose target carries a desk note carry it in the prompt"
    assert checks[REACHES_PROMPTS].found == said
    labels = checks[LABELS_KEPT]
    assert labels.status == PASS and labels.found.startswith("the note points to its label in ")
    assert f"of {noted} training pairs' targets (95% CI " in labels.found
    assert "of 64 cued test theses' true actions" in labels.found


def test_a_prompt_that_leaves_the_facts_out_is_named_with_its_fix(tmp_path):
    without_facts = {"input_template": "{ticker} on {as_of_date} for {horizon_days}", "omit_fields": {"facts": "none"}}
    prompt = SFT.prompt.model_dump() | without_facts
    records = cued_records()
    write_training_pairs(tmp_path, records, SFT.model_copy(update={"prompt": PromptConfig(**prompt)}))
    check = _preconditions(tmp_path)[REACHES_PROMPTS]
    assert check.status == FAIL and check.found.startswith("0 of the ")
    assert "put {facts} back in prompt.input_template" in check.fix and "prompt.omit_fields" in check.fix


def test_scrambled_labels_are_named_on_either_side(tmp_path):
    records = cued_records()
    shuffled = [r["action"] for r in records]
    random.Random(1).shuffle(shuffled)
    write_training_pairs(tmp_path / "a", records, SFT, actions=shuffled)
    training = _preconditions(tmp_path / "a")[LABELS_KEPT]
    assert training.status == FAIL and "nemo_jsonl's export" in training.fix
    # Faithful training pairs, but the test theses' true actions agree with their notes no more than chance would.
    write_training_pairs(tmp_path / "b", records, SFT)
    test_side = _preconditions(tmp_path / "b", test=(0.2, 64))[LABELS_KEPT]
    assert test_side.status == FAIL and "20.3% of 64 cued test theses' true actions" in test_side.found


def test_without_training_pairs_nothing_is_claimed():
    checks = data_preconditions(None, missing="training.jsonl: missing")
    assert [c.name for c in checks] == [REACHES_PROMPTS, LABELS_KEPT]
    assert {(c.status, c.found) for c in checks} == {(NOT_CHECKED, "training.jsonl: missing")}
