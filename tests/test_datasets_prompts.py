"""The prompt and the target: what the model sees and what it must write."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sftc_assets.sft_data.prompts import build_example, prompt_pattern, render_prompt
from sftc_assets.theses.schema import RECORD_FIELDS
from sftc_core.configs import NOT_IN_PROMPT, PROMPT_SLOTS, ConfigError, PromptConfig, load_sft_config
from sftc_core.target_format import join_support, split_support

SFT = load_sft_config()
RECORD = {
    "id": "ibm-2011-03-04",
    "ticker": "IBM",
    "as_of_date": "2011-03-04",
    "reasoning": "IBM is in an uptrend.",
    "support": ["60-session return +8.0%", "At its 52-week high"],
    "action": "BUY",
    "horizon_days": 5,
    "confidence": None,
    "source_file": "2011/03/IBM-2011-03.xml",
}


def test_target_format():
    assert (
        SFT.target_format.format_target("R.", ["a", "b"], "STRONG_SELL")
        == "<reasoning>R.</reasoning><support>a; b</support><action>STRONG_SELL</action>"
    )


def test_example_fills_the_templates():
    example = build_example(RECORD, SFT)
    assert example["instruction"] == SFT.prompt.instruction
    assert example["input"] == (
        "Ticker: IBM\nAs of: 2011-03-04\nHorizon: 5 trading days\n"
        "Facts:\n- 60-session return +8.0%\n- At its 52-week high"
    )
    assert example["output"].endswith("<action>BUY</action>")
    prompt = render_prompt(example["instruction"], example["input"], SFT)
    assert prompt.startswith("### Instruction:\n" + SFT.prompt.instruction)
    assert prompt.endswith("### Input:\n" + example["input"] + "\n\n### Response:\n")


def test_braces_in_values_are_kept_literally():
    prompt = render_prompt("say {input}", "x {ticker} y", SFT)
    assert "say {input}" in prompt and "x {ticker} y" in prompt


def test_unknown_placeholder_in_the_config_is_a_config_error():
    broken = SFT.model_copy(update={"prompt": SFT.prompt.model_copy(update={"input_template": "{ticker} {sector}"})})
    with pytest.raises(ConfigError, match="prompt.input_template.*sector"):
        build_example(RECORD, broken)


def test_every_field_of_a_record_is_a_slot_of_the_prompt_or_left_out_for_a_stated_reason():
    assert sorted({*PROMPT_SLOTS.values(), *NOT_IN_PROMPT}) == sorted(RECORD_FIELDS)
    assert set(PROMPT_SLOTS.values()).isdisjoint(NOT_IN_PROMPT) and all(NOT_IN_PROMPT.values())
    assert SFT.prompt.carried_slots == list(PROMPT_SLOTS)  # the shipped template carries every slot


def test_a_slot_omitted_with_its_reason_is_left_out_of_every_prompt():
    prompt = SFT.prompt.model_dump() | {
        "input_template": "Ticker: {ticker}\nAs of: {as_of_date}\nFacts:\n{facts}",
        "omit_fields": {"horizon_days": "every thesis here has a 5-session horizon"},
    }
    omitted = SFT.model_copy(update={"prompt": PromptConfig(**prompt)})
    assert omitted.prompt.carried_slots == ["ticker", "as_of_date", "facts"]
    example = build_example(RECORD | {"horizon_days": 17}, omitted)
    assert "IBM" in example["input"] and "17" not in example["input"]
    with pytest.raises(ValueError, match=r"prompt.omit_fields.horizon_days gives no reason"):
        PromptConfig(**prompt | {"omit_fields": {"horizon_days": " "}})


def test_the_prompt_pattern_knows_prompts_of_these_templates_only():
    example = build_example(RECORD, SFT)
    pattern = prompt_pattern(SFT)
    assert pattern.fullmatch(render_prompt(example["instruction"], example["input"], SFT))
    renamed = SFT.prompt.input_template.replace("Ticker:", "Symbol:")
    other = SFT.model_copy(update={"prompt": SFT.prompt.model_copy(update={"input_template": renamed})})
    assert not pattern.fullmatch(render_prompt(example["instruction"], build_example(RECORD, other)["input"], SFT))


@given(st.lists(st.text(alphabet=st.sampled_from("ab;\\ x"), min_size=1), max_size=6))
def test_support_points_round_trip(points):
    assert split_support(join_support(points)) == points


def test_plain_points_are_not_escaped():
    assert join_support(["up 3%", "volume high"]) == "up 3%; volume high"
    assert split_support("") == []
