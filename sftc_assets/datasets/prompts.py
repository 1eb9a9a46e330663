"""How a thesis record becomes a supervised pair: the prompt the model sees and the target it must write.

Training, evaluation and the NeMo export all import these, so the text is built in exactly one place.

The target is one line: `<reasoning>R</reasoning><support>P1; P2; P3</support><action>BUY</action>`.
Support points are joined with SUPPORT_SEPARATOR ("; "); inside a point a backslash is written "\\\\" and a
";" is written "\\;", so `split_support(join_support(points)) == points` for any points (the sample corpus never
needs the escapes, theses written by people may).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from sftc_resources.settings import ConfigError, SftConfig

SUPPORT_SEPARATOR = "; "
_SUPPORT_SPLIT = re.compile(r"(?<!\\)((?:\\\\)*); ")
_UNESCAPE = re.compile(r"\\(.)")


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


def format_target(reasoning: str, support: Sequence[str], action: str) -> str:
    """The text the model learns to write (the NeMo `output`)."""
    return f"<reasoning>{reasoning}</reasoning><support>{join_support(support)}</support><action>{action}</action>"


def format_facts(support: Sequence[str]) -> str:
    """The support points as the prompt's facts: one "- " line each."""
    return "\n".join(f"- {point}" for point in support)


def _fill(template: str, field: str, values: Mapping[str, object]) -> str:
    try:
        return template.format_map(values)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"configs/sft_config.yaml: field '{field}' has a placeholder that cannot be filled ({exc!r}); "
            f"allowed placeholders: {', '.join('{' + k + '}' for k in values)}"
        ) from None


def render_prompt(instruction: str, input_text: str, sft_config: SftConfig) -> str:
    """The text the model sees (the NeMo `input`): prompt.template with the instruction and the input."""
    return _fill(sft_config.prompt.template, "prompt.template", {"instruction": instruction, "input": input_text})


def build_input(record: Mapping, sft_config: SftConfig) -> str:
    values = {
        "ticker": record["ticker"],
        "as_of_date": record["as_of_date"],
        "horizon_days": record["horizon_days"],
        "facts": format_facts(record["support"]),
    }
    return _fill(sft_config.prompt.input_template, "prompt.input_template", values)


def build_example(record: Mapping, sft_config: SftConfig) -> dict[str, str]:
    """A thesis record (spec/thesis-xml.md) as `{instruction, input, output}`."""
    return {
        "instruction": sft_config.prompt.instruction,
        "input": build_input(record, sft_config),
        "output": format_target(record["reasoning"], record["support"], record["action"]),
    }
