"""configs/sft_config.yaml: how theses become fine-tuning pairs (prompt templates against the records, splits,
special tokens, sequence length)."""

from __future__ import annotations

import string
from pathlib import Path

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from sftc_core.configs.base import CONFIG_DIR, Strict, load_yaml_model
from sftc_core.target_format import TargetFormat, tag_pairs

# What the prompt carries of a thesis record (docs/thesis-xml.md): each slot of prompt.input_template and the record
# field that fills it. A slot the template leaves out must be named in prompt.omit_fields with the reason.
PROMPT_SLOTS = {"ticker": "ticker", "as_of_date": "as_of_date", "horizon_days": "horizon_days", "facts": "support"}
# The record's other fields, and why the prompt does not carry them.
NOT_IN_PROMPT = {
    "id": "bookkeeping (the eval CSV's key)",
    "reasoning": "the answer: the target's <reasoning>",
    "action": "the label: the target's <action>",
    "confidence": "the author's confidence in the action, part of the answer rather than a fact to read",
    "source_file": "bookkeeping (where the thesis was read)",
}
# The slots of prompt.template: the instruction and the filled input_template.
TEMPLATE_SLOTS = ("instruction", "input")


def template_slots(template: str) -> list[str]:
    """The slots of a str.format template in order (`{{`, `}}`: literal braces); ValueError if it does not parse."""
    return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]


def _slot_list(names) -> str:
    return ", ".join("{" + name + "}" for name in names)


class PromptConfig(Strict):
    instruction: str = Field(min_length=1)
    input_template: str = Field(min_length=1)
    template: str = Field(min_length=1)
    # Slots of input_template left out on purpose, each with its reason (horizon_days: "every thesis has the same").
    omit_fields: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _carries_the_records(self) -> PromptConfig:
        problems = prompt_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def carried_slots(self) -> list[str]:
        return [slot for slot in PROMPT_SLOTS if slot not in self.omit_fields]


def prompt_problems(prompt: PromptConfig) -> list[str]:
    """Where the templates contradict the records: a slot no record field fills, a field the input leaves out
    without a reason in prompt.omit_fields, an omission the template contradicts. Each names template, slot and fix."""
    problems = []
    slots = {}
    for field, known in (("template", TEMPLATE_SLOTS), ("input_template", PROMPT_SLOTS)):
        try:
            slots[field] = template_slots(getattr(prompt, field))
        except ValueError as exc:
            problems.append(f"prompt.{field} is not a format string ({exc}); a slot is {{name}}, a brace {{{{ or }}}}")
            continue
        problems += [
            f"prompt.{field} has the slot {{{slot}}}, which nothing fills; its slots are {_slot_list(known)}"
            for slot in dict.fromkeys(slots[field])
            if slot not in known
        ]
    in_template = slots.get("template", TEMPLATE_SLOTS)
    problems += [f"prompt.template must contain {{{slot}}}" for slot in TEMPLATE_SLOTS if slot not in in_template]
    carried = slots.get("input_template", PROMPT_SLOTS)
    for slot, record_field in PROMPT_SLOTS.items():
        reason = prompt.omit_fields.get(slot)
        if slot not in carried and reason is None:
            problems.append(
                f"prompt.input_template leaves out {{{slot}}} (the record's {record_field}), so no prompt would carry "
                f"it; add {{{slot}}} to prompt.input_template, or name it in prompt.omit_fields with the reason"
            )
        elif slot in carried and reason is not None:
            problems.append(
                f"prompt.omit_fields says {{{slot}}} is left out ({reason!r}), but prompt.input_template "
                "carries it: drop one of the two"
            )
    for slot, reason in prompt.omit_fields.items():
        if slot not in PROMPT_SLOTS:
            problems.append(f"prompt.omit_fields names {{{slot}}}, not one of {_slot_list(PROMPT_SLOTS)}")
        elif not reason.strip():
            problems.append(f"prompt.omit_fields.{slot} gives no reason: say why the prompt leaves {{{slot}}} out")
    return problems


class SplitsConfig(Strict):
    embargo_days: int = Field(ge=0)
    min_samples: int = Field(ge=1)


class SftConfig(Strict):
    prompt: PromptConfig
    # The target's parts in order (reasoning, support, action), each an opening and a closing tag.
    special_tokens: list[str] = Field(min_length=1)
    splits: SplitsConfig
    max_seq_length: int = Field(gt=0)

    @field_validator("special_tokens")
    @classmethod
    def _tag_pairs(cls, value: list[str]) -> list[str]:
        tag_pairs(value)
        return value

    @property
    def target_format(self) -> TargetFormat:
        return TargetFormat.from_special_tokens(self.special_tokens)


def load_sft_config(path: Path | str | None = None) -> SftConfig:
    return load_yaml_model(path or CONFIG_DIR / "sft_config.yaml", SftConfig)
