"""The prompt and the target: what the model sees and what it must write."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sftc_assets.sft_data.prompts import build_example, render_prompt
from sftc_core.configs import ConfigError, load_sft_config
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
    assert SFT.target_format.format_target("R.", ["a", "b"], "STRONG_SELL") == "<reasoning>R.</reasoning><support>a; b</support><action>STRONG_SELL</action>"


def test_example_fills_the_templates():
    example = build_example(RECORD, SFT)
    assert example["instruction"] == SFT.prompt.instruction
    assert example["input"] == (
        "Ticker: IBM\nAs of: 2011-03-04\nHorizon: 5 trading days\nFacts:\n- 60-session return +8.0%\n- At its 52-week high"
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


@given(st.lists(st.text(alphabet=st.sampled_from("ab;\\ x"), min_size=1), max_size=6))
def test_support_points_round_trip(points):
    assert split_support(join_support(points)) == points


def test_plain_points_are_not_escaped():
    assert join_support(["up 3%", "volume high"]) == "up 3%; volume high"
    assert split_support("") == []
