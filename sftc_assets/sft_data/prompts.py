"""How a thesis record becomes a supervised pair: the prompt the model sees and the target it must write.

Training, evaluation and the NeMo export all build the text here, from configs/sft_config.yaml: the prompt
from `prompt.*`, the target through the configured tags (sftc_core.target_format).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from sftc_core.configs import PROMPT_SLOTS, ConfigError, SftConfig


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
    values = {slot: record[field] for slot, field in PROMPT_SLOTS.items()} | {"facts": format_facts(record["support"])}
    return _fill(sft_config.prompt.input_template, "prompt.input_template", values)


def prompt_pattern(sft_config: SftConfig) -> re.Pattern:
    """What every prompt rendered by these templates looks like: their text, each filled slot any text (for the GPU
    plan, which checks that the NeMo JSONL's prompts came from the configured templates)."""
    marker = "\x00slot\x00"
    input_text = sft_config.prompt.input_template.format_map(dict.fromkeys(PROMPT_SLOTS, marker))
    parts = render_prompt(sft_config.prompt.instruction, input_text, sft_config).split(marker)
    return re.compile("(.*?)".join(map(re.escape, parts)), re.DOTALL)


def build_example(record: Mapping, sft_config: SftConfig) -> dict[str, str]:
    """A thesis record (docs/thesis-xml.md) as `{instruction, input, output}`."""
    return {
        "instruction": sft_config.prompt.instruction,
        "input": build_input(record, sft_config),
        "output": sft_config.target_format.format_target(record["reasoning"], record["support"], record["action"]),
    }
