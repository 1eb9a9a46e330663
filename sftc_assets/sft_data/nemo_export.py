"""The splits as NeMo fine-tuning files (sftc_core/nemo_format.py): `training.jsonl`, `validation.jsonl`,
`test.jsonl`, one `{"input": rendered prompt, "output": target}` a line, plus `export_summary.json`.

With a tokenizer, the summary has token lengths counted the way the training backend feeds them: the prompt
with the tokenizer's own special tokens (BOS), the target without them plus one EOS. A pair whose total exceeds
`max_seq_length` of configs/sft_config.yaml is counted as a truncation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sftc_assets.sft_data.prompts import render_prompt
from sftc_assets.sft_data.splits import SPLITS, load_splits
from sftc_core.configs import SftConfig
from sftc_core.io import BeforeSwap, atomic_dir, atomic_write_json, atomic_write_jsonl
from sftc_core.nemo_format import NEMO_FILES, file_problems
from sftc_core.target_format import tags_as_text

SUMMARY_FILE = "export_summary.json"


def nemo_pairs(split, sft_config: SftConfig, max_samples: int | None = None) -> list[dict[str, str]]:
    """`{"input", "output"}` for the first `max_samples` rows of one split (all rows when None)."""
    rows = split if max_samples is None else split.select(range(min(max_samples, len(split))))
    return [{"input": render_prompt(r["instruction"], r["input"], sft_config), "output": r["output"]} for r in rows]


def training_texts(dataset_dir: Path | str, sft_config: SftConfig) -> list[str]:
    """Prompt and target of every train record, as the NeMo training lines hold them: the toy tokenizer's corpus."""
    return [
        text
        for pair in nemo_pairs(load_splits(dataset_dir)["train"], sft_config)
        for text in (pair["input"], pair["output"])
    ]


def load_local_tokenizer(path: Path | str):
    """A tokenizer from a local directory only (never the hub)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: tokenizer directory not found (pass a checkpoint directory, or --skip-tokenizer)"
        )
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{path}: cannot load a tokenizer from it ({exc}); "
            "pass a directory with tokenizer.json, or --skip-tokenizer"
        ) from None


def tag_tokens(tokenizer, tags: list[str]) -> dict[str, int]:
    """The tokens each tag takes as text under a transformers tokenizer (the one rule: target_format.tags_as_text)."""

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    return tags_as_text(encode, tokenizer.get_added_vocab(), tags, str(tokenizer.name_or_path))


def _length_stats(lengths: list[int]) -> dict:
    values = np.asarray(lengths, dtype=np.float64)
    return {
        "min": int(values.min()),
        "mean": round(float(values.mean()), 1),
        "p95": round(float(np.percentile(values, 95)), 1),
        "max": int(values.max()),
    }


def token_stats(
    tokenizer, pairs_by_split: dict[str, list[dict]], max_seq_length: int, special_tokens: list[str]
) -> dict:
    """Token lengths of prompt, target and total (min/mean/p95/max), the pairs over `max_seq_length` and the tokens
    each tag takes as text (ValueError when the tokenizer holds a tag as a token of its own)."""
    eos = 1 if tokenizer.eos_token_id is not None else 0
    prompt, target, over = [], [], {}
    for name, pairs in pairs_by_split.items():
        prompt_lengths = [len(ids) for ids in tokenizer([p["input"] for p in pairs])["input_ids"]] if pairs else []
        target_lengths = (
            [len(ids) + eos for ids in tokenizer([p["output"] for p in pairs], add_special_tokens=False)["input_ids"]]
            if pairs
            else []
        )
        over[name] = sum(1 for a, b in zip(prompt_lengths, target_lengths) if a + b > max_seq_length)
        prompt += prompt_lengths
        target += target_lengths
    if not prompt:
        return {}
    return {
        "prompt": _length_stats(prompt),
        "target": _length_stats(target),
        "total": _length_stats([a + b for a, b in zip(prompt, target)]),
        "max_seq_length": max_seq_length,
        "truncated": sum(over.values()),
        "truncated_by_split": over,
        # The tags are text (sftc_core/target_format.py): the tokens each one takes.
        "tag_tokens": tag_tokens(tokenizer, special_tokens),
    }


def export_nemo(
    dataset_dir: Path | str,
    output_dir: Path | str,
    sft_config: SftConfig,
    max_samples: int | None = None,
    tokenizer_path: Path | str | None = None,
    stamp: BeforeSwap | None = None,
) -> dict:
    """Write the three NeMo files and `export_summary.json` into `output_dir` atomically; returns the summary.

    `max_samples` caps each split (its first rows, in time order). Every written line is read back and checked.
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"--max-samples must be >= 1, got {max_samples}")
    dataset = load_splits(dataset_dir)
    tokenizer = load_local_tokenizer(tokenizer_path) if tokenizer_path is not None else None
    pairs = {name: nemo_pairs(dataset[name], sft_config, max_samples) for name in SPLITS}
    summary = {
        "counts": {name: len(rows) for name, rows in pairs.items()},
        "files": {name: NEMO_FILES[name] for name in SPLITS},
        "max_samples": max_samples,
        "special_tokens": list(sft_config.special_tokens),
        "tokenizer": str(tokenizer_path) if tokenizer is not None else None,
        "token_stats": token_stats(tokenizer, pairs, sft_config.max_seq_length, sft_config.special_tokens)
        if tokenizer is not None
        else None,
    }
    with atomic_dir(output_dir, stamp) as staging:
        for name in SPLITS:
            atomic_write_jsonl(staging / NEMO_FILES[name], pairs[name])
            _, problems = file_problems(staging / NEMO_FILES[name], sft_config.special_tokens)
            if problems:
                shown = "; ".join(p.replace(str(staging), str(output_dir)) for p in problems[:3])
                raise ValueError(f"{len(problems)} NeMo line(s) fail the format check, nothing written: {shown}")
        atomic_write_json(staging / SUMMARY_FILE, summary)
    return summary
