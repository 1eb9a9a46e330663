"""Reading the action back on the shapes real model output takes, through the configured target format."""

from __future__ import annotations

import pytest

from sftc_core.configs import load_sft_config
from sftc_core.target_format import TargetFormat, normalise_action

parse_action = load_sft_config().target_format.parse_action


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<action>BUY</action>", "BUY"),
        ("<action> strong buy </action>", "STRONG_BUY"),
        ("<action>\nStrong-Sell\n</action>", "STRONG_SELL"),
        ("<reasoning>Margins widen.</reasoning><support>a; b</support><action>hold</action>", "HOLD"),
        ("<reasoning>x</reasoning><action>SELL</action> and then some stray words BUY BUY", "SELL"),
        ("<reasoning>cut off mid-answer</reasoning><action>STRONG_BUY", "STRONG_BUY"),
        ("Action: strong buy", "STRONG_BUY"),
        ("The view is constructive.\n**Action:** Buy", "BUY"),
        ("action = sell", "SELL"),
        ("STRONG-SELL", "STRONG_SELL"),
        ("  buy.  ", "BUY"),
        ("<action>maybe</action> Action: hold", "HOLD"),
    ],
)
def test_actions_are_found(text, expected):
    assert parse_action(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "   \n ",
        "<reasoning>no action given</reasoning>",
        "The BUYBACK continues and buyers are back.",
        "<action>BUYBACK</action>",
        "<action>BUY_BACK</action>",
        "Action: buyer",
        "transaction: sell",  # "action" inside another word is no label
        "I would probably buy this stock",  # a verb in prose is no answer
        "<action></action>",
    ],
)
def test_no_action_is_none(text):
    assert parse_action(text) is None


def test_two_conflicting_tags_the_first_wins():
    assert parse_action("<action>SELL</action><action>BUY</action>") == "SELL"
    assert parse_action("<action>BUY</action> Action: SELL") == "BUY"  # a tag outranks a label anywhere


def test_normalise_action_rejects_a_non_action():
    assert normalise_action("strong  buy") == "STRONG_BUY"
    with pytest.raises(ValueError, match="expected one of STRONG_BUY"):
        normalise_action("ACCUMULATE")


def test_the_configured_tags_drive_both_the_target_and_the_parse():
    """Edit the tags in sft_config.yaml and the written target and the parser follow (no tag is hard-coded)."""
    custom = TargetFormat.from_special_tokens(["<why>", "</why>", "<facts>", "</facts>", "<decision>", "</decision>"])
    target = custom.format_target("Up.", ["a; b", "c"], "BUY")
    assert target == "<why>Up.</why><facts>a\\; b; c</facts><decision>BUY</decision>"
    assert custom.parse_action(target) == "BUY"
    assert custom.parse_action("<action>SELL</action>") is None  # the default tag means nothing to this format
    assert parse_action("<decision>SELL</decision>") is None


@pytest.mark.parametrize(
    "tokens",
    [
        ["<reasoning>", "</reasoning>", "<support>", "</support>"],
        ["<reasoning>", "</reasoning>", "<support>", "</support>", "<action>", "</act>"],
        ["<a>", "</a>", "<a>", "</a>", "<b>", "</b>"],
    ],
)
def test_tags_that_do_not_pair_are_refused(tokens):
    with pytest.raises(ValueError, match="reasoning, support and action|three different tags|not a pair"):
        TargetFormat.from_special_tokens(tokens)


@pytest.mark.parametrize(
    ("stripped", "expected"),
    [
        # transformers serve's text for "<reasoning>…</reasoning><support>…</support><action>SELL</action>"
        # (seen on the toy).
        (
            "The trend is up.Return over 5 sessions +1.8%; 5-day volume -11% vs the 60-day averageSTRONG_SELL",
            "STRONG_SELL",
        ),
        ("IBM drifts.Close 190; RSI 55HOLD", "HOLD"),
        ("Close 101.2BUY \n", "BUY"),  # a digit before the action: no word boundary once the tags are gone
        ("Sellers left.Close 1SELL", "SELL"),
    ],
)
def test_a_tag_stripped_output_is_read_from_its_end(stripped, expected):
    assert parse_action(stripped, tags_stripped=True) == expected
    assert parse_action(stripped) is None  # only a server known to strip the tags gets the end-of-text rule


@pytest.mark.parametrize(
    "stripped", ["The trend is up.Close 1", "Close 1buy", "STRONG_BUY is what others say.Close 1", ""]
)
def test_a_tag_stripped_output_without_an_action_at_its_end_is_none(stripped):
    assert parse_action(stripped, tags_stripped=True) is None
