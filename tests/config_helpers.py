"""A clone of configs/ to plant faults in, and NeMo JSONL written the way the export writes it, for the tests of the
config rules, the GPU plan and the fault suite."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from sftc_assets.sft_data.prompts import build_example, render_prompt
from sftc_core.configs import CONFIG_DIR, SftConfig
from sftc_core.io import atomic_write_jsonl
from sftc_core.nemo_format import NEMO_FILES


def config_clone(tmp_path: Path) -> Path:
    """A copy of configs/ (every file, the reference model config included)."""
    return Path(shutil.copytree(CONFIG_DIR, tmp_path / "configs"))


def edit_yaml(path: Path, change) -> None:
    """`change(raw)` edits the parsed file in place; the file is written back."""
    raw = yaml.safe_load(path.read_text())
    change(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


# As long as the toy corpus's pairs under DeepSeek-V3's tokenizer (~310 tokens on average, answers up to ~200).
REASONING = (
    "The trend is up: the stock gained 10.2% over three months and holds above its 200-day average, with volume "
    "confirming. Price swings have calmed to 15% annualised. It remains 4% below its 52-week high."
)
FACTS = (
    "60-session return +10.2%, 120-session return +15.6%",
    "Realised volatility 15% (120-day: 17%)",
    "Price +2.1% vs the 50-day average and +8.4% vs the 200-day average",
    "5-day volume +15% vs the 60-day average",
)


def write_nemo_data(root: Path, sft: SftConfig, lines: int = 40, reasoning: str = REASONING) -> Path:
    """training / validation / test JSONL of rendered prompts and formatted targets (the export's shape)."""
    for split in NEMO_FILES.values():
        rows = []
        for i in range(lines):
            support = [f"Return over 20 sessions +{i}.0%", *FACTS]
            record = {
                "ticker": f"T{i}",
                "as_of_date": "2012-01-03",
                "horizon_days": 5,
                "reasoning": reasoning,
                "support": support,
                "action": "BUY" if i % 2 else "SELL",
            }
            example = build_example(record, sft)
            rows.append(
                {"input": render_prompt(example["instruction"], example["input"], sft), "output": example["output"]}
            )
        atomic_write_jsonl(root / split, rows)
    return root
