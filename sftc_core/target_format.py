"""The target the model learns to write, and the action read back from any output: one format, from the config.

`special_tokens` in configs/sft_config.yaml names the target's three parts in order (reasoning, support, action),
each an opening and a closing tag; the default target is one line:
`<reasoning>R</reasoning><support>P1; P2; P3</support><action>BUY</action>`. Training, the NeMo export, evaluation
and the checks all build it and read it through `TargetFormat`, so editing the tags changes every one of them.

Support points are joined with SUPPORT_SEPARATOR ("; "); inside a point a backslash is written "\\\\" and a ";"
is written "\\;", so `split_support(join_support(points)) == points` for any points.

Reading the action, the first match wins:
1. the first action tag whose text starts with an action (`<action> strong buy </action>`; an unclosed
   `<action>BUY` at the end of a cut-off output counts too). A later, conflicting tag is ignored: the format
   ends at the first closing action tag, so anything after it is the model running on past its answer;
2. the first label `Action: …` (`Action: strong buy`, `**Action:** SELL`, `action = hold`);
3. an output that is nothing but an action (`STRONG-SELL`, ` buy. `);
4. only for an output whose server stripped the tags (`tags_stripped`: servers decode with special tokens skipped,
   so `<reasoning>R</reasoning><support>P</support><action>BUY</action>` arrives as `RPBUY`): the action as the
   format writes it (upper case, canonical) at the very end, where `</action>` was.
Otherwise None. An action word must stand alone: "BUY" inside "BUYBACK", "BUYER" or "BUY_BACK" never counts.

The tags are text (`tags_as_text`), for both backends: NeMo reads them with the model's own tokenizer and, under
LoRA, the embeddings and the output layer stay frozen, so a token added for a tag could never be learned. No
tokenizer gets them as tokens; each tag is the few ids its text makes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

ACTIONS = ("STRONG_BUY", "BUY", "HOLD", "SELL", "STRONG_SELL")
PARTS = ("reasoning", "support", "action")
DEFAULT_SPECIAL_TOKENS = ("<reasoning>", "</reasoning>", "<support>", "</support>", "<action>", "</action>")
SUPPORT_SEPARATOR = "; "

_SUPPORT_SPLIT = re.compile(r"(?<!\\)((?:\\\\)*); ")
_UNESCAPE = re.compile(r"\\(.)")
_TAG = re.compile(r"<([A-Za-z_][A-Za-z0-9_\-]*)>")
# Longest names first, so "strong buy" is not read as "buy"; separators as the thesis spec allows.
_ACTION_WORD = r"(?<![A-Za-z0-9_])(strong[\s_\-]*buy|strong[\s_\-]*sell|buy|sell|hold)(?![A-Za-z0-9_])"
_LABELLED = re.compile(r"(?<![A-Za-z0-9_])action\W{0,3}?\s*[:=]\s*[*`\"']*\s*" + _ACTION_WORD, re.IGNORECASE)
_ONLY = re.compile(r"^[\s*`\"'.!:\-]*" + _ACTION_WORD + r"[\s*`\"'.!]*$", re.IGNORECASE)
# No word boundary before it: with the tags gone the action follows the support text directly ("…average" + "SELL").
_STRIPPED_TAIL = re.compile("(" + "|".join(ACTIONS) + r")\s*$")


def normalise_action(word: str) -> str:
    """`strong-buy`, `Strong Buy`, `STRONG_BUY` -> `STRONG_BUY` (raises ValueError for a non-action)."""
    name = re.sub(r"[\s_\-]+", "_", word.strip()).upper()
    if name not in ACTIONS:
        raise ValueError(f"{word!r} is not an action; expected one of {', '.join(ACTIONS)}")
    return name


def _escape_point(point: str) -> str:
    return point.replace("\\", "\\\\").replace(";", "\\;")


def join_support(points: Sequence[str]) -> str:
    return SUPPORT_SEPARATOR.join(_escape_point(p) for p in points)


def split_support(text: str) -> list[str]:
    """The inverse of `join_support` ("" is no points)."""
    if text == "":
        return []
    # A separator counts only where the ";" before it is not escaped (an even run of backslashes precedes it).
    parts, start = [], 0
    for match in _SUPPORT_SPLIT.finditer(text):
        parts.append(text[start : match.end(1)])
        start = match.end()
    parts.append(text[start:])
    return [_UNESCAPE.sub(r"\1", part) for part in parts]


def tag_pairs(special_tokens: Sequence[str]) -> dict[str, tuple[str, str]]:
    """{part: (opening, closing)} from the six tokens; ValueError saying what is expected otherwise."""
    tokens = list(special_tokens)
    expected = (
        "six tokens, an opening and a closing tag for reasoning, support and action in that order, e.g. "
        + ", ".join(DEFAULT_SPECIAL_TOKENS)
    )
    if len(tokens) != 2 * len(PARTS):
        raise ValueError(f"{len(tokens)} special tokens given; expected {expected}")
    pairs = {}
    for part, opening, closing in zip(PARTS, tokens[0::2], tokens[1::2]):
        match = _TAG.fullmatch(opening)
        if match is None or closing != f"</{match[1]}>":
            raise ValueError(
                f"{opening!r}, {closing!r} (the {part} tags) are not a pair <name>, </name>; expected {expected}"
            )
        pairs[part] = (opening, closing)
    if len({opening for opening, _ in pairs.values()}) != len(PARTS):
        raise ValueError(f"the three parts need three different tags, got {', '.join(tokens)}")
    return pairs


@dataclass(frozen=True)
class TargetFormat:
    """The target's tags; `format_target` writes a target, `parse_action` reads the action of any output."""

    reasoning: tuple[str, str]
    support: tuple[str, str]
    action: tuple[str, str]

    @classmethod
    def from_special_tokens(cls, special_tokens: Sequence[str]) -> TargetFormat:
        return cls(**tag_pairs(special_tokens))

    @property
    def special_tokens(self) -> tuple[str, ...]:
        return (*self.reasoning, *self.support, *self.action)

    def format_target(self, reasoning: str, support: Sequence[str], action: str) -> str:
        """The text the model learns to write (the NeMo `output`)."""
        (r_open, r_close), (s_open, s_close), (a_open, a_close) = self.reasoning, self.support, self.action
        return f"{r_open}{reasoning}{r_close}{s_open}{join_support(support)}{s_close}{a_open}{action}{a_close}"

    @functools.cached_property
    def _tagged(self) -> re.Pattern:
        return re.compile(re.escape(self.action[0]) + r"\s*" + _ACTION_WORD, re.IGNORECASE)

    def parse_action(self, text: str | None, tags_stripped: bool = False) -> str | None:
        """The canonical action (`STRONG_BUY`, `BUY`, `HOLD`, `SELL`, `STRONG_SELL`) in `text`, or None.

        `tags_stripped`: the text came from a server that decoded without the special tokens (rule 4 above)."""
        if not text:
            return None
        for pattern in (self._tagged, _LABELLED, _ONLY, *((_STRIPPED_TAIL,) if tags_stripped else ())):
            match = pattern.search(text)
            if match:
                return normalise_action(match.group(1))
        return None


def tags_as_text(
    encode: Callable[[str], list[int]], added_tokens: Collection[str], tags: Sequence[str], tokenizer: str
) -> dict[str, int]:
    """The one rule for the tags (module doc): {tag: how many tokens its text takes} under a tokenizer's `encode`
    (text without special tokens -> ids); ValueError naming the tag when the tokenizer holds it as a token of its own
    (`added_tokens`), which a server decoding without special tokens would drop."""
    added = sorted(set(tags) & set(added_tokens))
    if added:
        raise ValueError(
            f"{tokenizer}: the tokenizer holds {', '.join(added)} as tokens of its own; the tags must be text to the "
            "model's tokenizer (sftc_core/target_format.py): use a tokenizer without them (the base checkpoint's)"
        )
    return {tag: len(encode(tag)) for tag in tags}
