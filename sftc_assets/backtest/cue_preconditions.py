"""What a failed planted-cue check can name besides the symptom: whether the training data held the cue at all.

The toy corpus plants a desk note in some theses (sftc_assets/theses/sample_corpus.py); `planted_cue_recovered` fails
when the fine-tuned model does not follow it. Two of the preconditions live in the NeMo JSONL the model learnt from:
the note reaches the training prompts (it is a support point, so the prompt carries it through {facts}), and the
labels are not scrambled (the note points to its target's action far more often than chance). The report adds the
other two from the stages' own checks (splits ordered, training converged).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from scipy.stats import binomtest

from sftc_assets.backtest.report import CUE_P_VALUE
from sftc_assets.theses.sample_corpus import CUE_PHRASES
from sftc_core.checks import FAIL, NOT_CHECKED, PASS, TOY_CHAIN, Check
from sftc_core.nemo_format import NEMO_FILES, read_pairs
from sftc_core.target_format import TargetFormat
from sftc_core.text import format_share

REACHES_PROMPTS, LABELS_KEPT = "the cue reaches the prompts", "the labels are not scrambled"


def note_action(text: str) -> str | None:
    """The action the desk note in `text` points to (None: no note)."""
    return next((action for action, phrases in CUE_PHRASES.items() for phrase in phrases if phrase in text), None)


@dataclass(frozen=True)
class TrainingCues:
    """The desk notes of the training pairs: where they are, and how often they point to the target's action."""

    pairs: int
    in_targets: int  # pairs whose target carries a note (its record had one)
    in_prompts: int  # pairs whose prompt carries it
    noted: int  # pairs with a note and a parsable action in their target
    agreeing: int  # of those, the note pointing to the target's action
    chance: float  # the agreement expected were notes and actions independent (their shares among `noted`)


def training_cues(nemo_dir: Path | str, target_format: TargetFormat) -> TrainingCues:
    """The desk notes of the NeMo JSONL's training pairs (FileNotFoundError where nemo_jsonl is not there)."""
    pairs = read_pairs(Path(nemo_dir) / NEMO_FILES["train"])
    labelled = [(note_action(p["input"] + p["output"]), target_format.parse_action(p["output"])) for p in pairs]
    labelled = [(note, action) for note, action in labelled if note is not None and action is not None]
    notes, actions = Counter(note for note, _ in labelled), Counter(action for _, action in labelled)
    noted = len(labelled)
    return TrainingCues(
        pairs=len(pairs),
        in_targets=sum(1 for p in pairs if note_action(p["output"]) is not None),
        in_prompts=sum(1 for p in pairs if note_action(p["input"]) is not None),
        noted=noted,
        agreeing=sum(1 for note, action in labelled if note == action),
        chance=sum(notes[a] * actions[a] for a in notes) / noted**2 if noted else 0.0,
    )


def data_preconditions(
    cues: TrainingCues | None, test: tuple[float, int] | None = None, missing: str = ""
) -> list[Check]:
    """[the cue reaches the prompts, the labels are not scrambled] in the training pairs, the labels also on the test
    theses where `test` gives (the share of cued test theses whose note is their true action, their number: the
    backtest's cue_agrees_with_label and cued_rows); `missing`: why no training pair was read."""
    if cues is None:
        fix = "materialize nemo_jsonl, then the report"
        needed = "the NeMo JSONL's training pairs"
        return [Check(name, TOY_CHAIN, NOT_CHECKED, needed, missing, fix) for name in (REACHES_PROMPTS, LABELS_KEPT)]
    return [_reaches_prompts(cues), _labels_kept(cues, test)]


def _reaches_prompts(cues: TrainingCues) -> Check:
    needed = "the desk note of every cued training record in its prompt (the NeMo JSONL's input), not only its target"
    if not cues.in_targets:
        found = f"no training pair carries a desk note (of {cues.pairs:,})"
        fix = "a toy profile with corpus.source: sample and corpus.cue_share above 0"
        return Check(REACHES_PROMPTS, TOY_CHAIN, FAIL, needed, found, fix)
    found = (
        f"{cues.in_prompts:,} of the {cues.in_targets:,} training pairs whose target carries a desk note carry it "
        "in the prompt"
    )
    if cues.in_prompts < cues.in_targets:
        fix = (
            "put {facts} back in prompt.input_template of configs/sft_config.yaml (the note is a support point; "
            "drop it from prompt.omit_fields), then re-export nemo_jsonl"
        )
        return Check(REACHES_PROMPTS, TOY_CHAIN, FAIL, needed, found, fix)
    return Check(REACHES_PROMPTS, TOY_CHAIN, PASS, needed, found)


def _agreement(agreeing: int, rows: int, chance: float, where: str) -> tuple[bool, str]:
    """(above chance, in words) for `agreeing` of `rows` notes pointing to their label."""
    p = binomtest(agreeing, rows, chance, alternative="greater").pvalue
    low, high = binomtest(agreeing, rows).proportion_ci(0.95)
    interval = f"95% CI {format_share(low)} to {format_share(high)}"
    return p < CUE_P_VALUE, f"{format_share(agreeing / rows)} of {rows:,} {where} ({interval}, p = {p:.2g})"


def _labels_kept(cues: TrainingCues, test: tuple[float, int] | None) -> Check:
    needed = f"the note pointing to its label more often than chance (one-sided binomial p < {CUE_P_VALUE:g})"
    if not cues.noted:
        found = "no training pair with a desk note and a parsable action"
        return Check(LABELS_KEPT, TOY_CHAIN, NOT_CHECKED, needed, found)
    sides = [_agreement(cues.agreeing, cues.noted, cues.chance, "training pairs' targets")]
    if test is not None and test[1]:
        share, rows = test
        sides.append(_agreement(round(share * rows), rows, cues.chance, "cued test theses' true actions"))
    found = "the note points to its label in " + "; in ".join(text for _, text in sides)
    found += f"; chance {format_share(cues.chance)} (the notes' and the actions' shares)"
    if not all(above for above, _ in sides):
        fix = "look where the labels leave the records: nemo_jsonl's export, hf_splits' actions, eval_csv's true_action"
        return Check(LABELS_KEPT, TOY_CHAIN, FAIL, needed, found, fix)
    return Check(LABELS_KEPT, TOY_CHAIN, PASS, needed, found)
