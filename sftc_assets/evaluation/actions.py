"""The action a model's output commits to, read the way a person would read it.

Precedence, first match wins:
1. the first `<action>` tag whose text starts with an action (`<action> strong buy </action>`; an unclosed
   `<action>BUY` at the end of a cut-off output counts too). A later, conflicting tag is ignored: the format
   ends at the first `</action>`, so anything after it is the model running on past its answer;
2. the first label `Action: …` (`Action: strong buy`, `**Action:** SELL`, `action = hold`);
3. an output that is nothing but an action (`STRONG-SELL`, ` buy. `).
Otherwise None. An action word must stand alone: "BUY" inside "BUYBACK", "BUYER" or "BUY_BACK" never counts.
"""

from __future__ import annotations

import re

from sftc_resources.settings import ACTIONS

# Longest names first, so "strong buy" is not read as "buy"; separators as the thesis spec allows.
_ACTION_WORD = r"(?<![A-Za-z0-9_])(strong[\s_\-]*buy|strong[\s_\-]*sell|buy|sell|hold)(?![A-Za-z0-9_])"
_TAGGED = re.compile(r"<action>\s*" + _ACTION_WORD, re.IGNORECASE)
_LABELLED = re.compile(r"(?<![A-Za-z0-9_])action\W{0,3}?\s*[:=]\s*[*`\"']*\s*" + _ACTION_WORD, re.IGNORECASE)
_ONLY = re.compile(r"^[\s*`\"'.!:\-]*" + _ACTION_WORD + r"[\s*`\"'.!]*$", re.IGNORECASE)


def normalise_action(word: str) -> str:
    """`strong-buy`, `Strong Buy`, `STRONG_BUY` -> `STRONG_BUY` (raises ValueError for a non-action)."""
    name = re.sub(r"[\s_\-]+", "_", word.strip()).upper()
    if name not in ACTIONS:
        raise ValueError(f"{word!r} is not an action; expected one of {', '.join(ACTIONS)}")
    return name


def parse_action(text: str | None) -> str | None:
    """The canonical action (`STRONG_BUY`, `BUY`, `HOLD`, `SELL`, `STRONG_SELL`) in `text`, or None."""
    if not text:
        return None
    for pattern in (_TAGGED, _LABELLED, _ONLY):
        match = pattern.search(text)
        if match:
            return normalise_action(match.group(1))
    return None
