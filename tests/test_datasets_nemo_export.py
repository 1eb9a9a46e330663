"""The NeMo export: lines parse and carry the special tokens, max-samples, token statistics with a local tokenizer."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, load_from_disk
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sftc_assets.sft_data import nemo_export, splits
from sftc_assets.sft_data.prompts import render_prompt
from sftc_assets.theses.parser import parse_corpus
from sftc_assets.theses.sample_corpus import write_sample_corpus
from sftc_core.configs import CorpusConfig, load_sft_config
from sftc_core.nemo_format import file_problems
from sftc_jobs.cli import main as sftc

SFT = load_sft_config()
BOUNDS = (dt.date(2011, 1, 1), dt.date(2011, 6, 30), dt.date(2011, 9, 1), dt.date(2011, 10, 31))


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    """Sample corpus -> parser -> records JSONL -> splits: the real chain on four tickers, 2011-01..2011-10."""
    root = tmp_path_factory.mktemp("chain")
    config = CorpusConfig(source="sample", tickers=["AAPL", "MSFT", "IBM", "GOOG"], per_month=4, seed=3, horizon_days=5)
    write_sample_corpus(root / "xml", "2011-01", "2011-10", config)
    records = parse_corpus(root / "xml").records
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    splits.build_dataset(root / "records.jsonl", root / "hf", SFT, date_bounds=BOUNDS)
    return root / "hf"


def make_tokenizer(out: Path, texts: list[str], special_tokens: list[str]) -> Tokenizer:
    """A small word-level tokenizer trained here, saved as a transformers tokenizer directory."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        texts, trainers.WordLevelTrainer(vocab_size=400, special_tokens=["<unk>", "</s>", *special_tokens])
    )
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="</s>").save_pretrained(str(out))
    return tokenizer


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_writes_rendered_prompts_and_targets(dataset_dir, tmp_path):
    out = tmp_path / "nemo"
    summary = nemo_export.export_nemo(dataset_dir, out, SFT)
    dataset = load_from_disk(str(dataset_dir))
    for name in splits.SPLITS:
        lines = read_lines(out / nemo_export.NEMO_FILES[name])
        assert len(lines) == len(dataset[name]) == summary["counts"][name] > 0
        for line, row in zip(lines, dataset[name]):
            assert set(line) == {"input", "output"}
            assert line["input"] == render_prompt(row["instruction"], row["input"], SFT)
            assert line["output"] == row["output"]
            assert all(token in line["output"] for token in SFT.special_tokens)
        assert file_problems(out / nemo_export.NEMO_FILES[name], SFT.special_tokens) == (len(lines), [])
    assert summary["token_stats"] is None
    assert json.loads((out / nemo_export.SUMMARY_FILE).read_text())["counts"] == summary["counts"]


def test_max_samples_keeps_the_first_rows_of_each_split(dataset_dir, tmp_path):
    full = nemo_export.export_nemo(dataset_dir, tmp_path / "all", SFT)
    capped = nemo_export.export_nemo(dataset_dir, tmp_path / "capped", SFT, max_samples=5)
    for name in splits.SPLITS:
        assert capped["counts"][name] == min(5, full["counts"][name])
        first = read_lines(tmp_path / "all" / nemo_export.NEMO_FILES[name])[:5]
        assert read_lines(tmp_path / "capped" / nemo_export.NEMO_FILES[name]) == first
    with pytest.raises(ValueError, match="--max-samples must be >= 1"):
        nemo_export.export_nemo(dataset_dir, tmp_path / "zero", SFT, max_samples=0)


def test_token_statistics_with_a_local_tokenizer(dataset_dir, tmp_path):
    nemo_export.export_nemo(dataset_dir, tmp_path / "plain", SFT)
    pairs = [line for name in splits.SPLITS for line in read_lines(tmp_path / "plain" / nemo_export.NEMO_FILES[name])]
    raw = make_tokenizer(tmp_path / "tok", [p["input"] + " " + p["output"] for p in pairs], [])
    # Counted independently with the raw tokenizer: the prompt as encoded, the target plus one EOS.
    prompt = [len(raw.encode(p["input"]).ids) for p in pairs]
    total = [a + len(raw.encode(p["output"]).ids) + 1 for a, p in zip(prompt, pairs)]
    limit = sorted(total)[len(total) // 2]
    config = SFT.model_copy(update={"max_seq_length": limit})

    summary = nemo_export.export_nemo(dataset_dir, tmp_path / "nemo", config, tokenizer_path=tmp_path / "tok")
    stats = summary["token_stats"]
    assert (stats["prompt"]["min"], stats["prompt"]["max"]) == (min(prompt), max(prompt))
    assert (stats["total"]["min"], stats["total"]["max"]) == (min(total), max(total))
    assert stats["total"]["mean"] == pytest.approx(sum(total) / len(total), abs=0.05)
    assert stats["prompt"]["min"] <= stats["prompt"]["p95"] <= stats["prompt"]["max"]
    assert stats["truncated"] == sum(1 for t in total if t > limit) > 0
    assert sum(stats["truncated_by_split"].values()) == stats["truncated"]
    # the tags are text: each takes what the tokenizer makes of it (the whitespace pre-tokenizer splits < reasoning >)
    assert stats["tag_tokens"] == {tag: len(raw.encode(tag).ids) for tag in SFT.special_tokens}
    assert min(stats["tag_tokens"].values()) > 1


def test_a_tokenizer_that_holds_the_tags_as_tokens_of_its_own_is_refused(dataset_dir, tmp_path):
    make_tokenizer(tmp_path / "tok", ["reasoning support action Ticker"], SFT.special_tokens)
    held = "</action>, </reasoning>, </support>, <action>, <reasoning>, <support>"
    with pytest.raises(ValueError, match=rf"the tokenizer holds {held} as tokens of its own"):
        nemo_export.export_nemo(dataset_dir, tmp_path / "nemo", SFT, max_samples=2, tokenizer_path=tmp_path / "tok")
    assert not (tmp_path / "nemo").exists()


def test_lines_without_the_special_tokens_fail_and_leave_nothing(tmp_path):
    rows = {"instruction": ["i"], "input": ["x"], "output": ["<reasoning>r</reasoning> BUY"]}
    DatasetDict({name: Dataset.from_dict(rows) for name in splits.SPLITS}).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(
        ValueError,
        match=r"training\.jsonl:1: output lacks special token\(s\) <support>, </support>, <action>, </action>",
    ):
        nemo_export.export_nemo(tmp_path / "hf", tmp_path / "nemo", SFT)
    assert not (tmp_path / "nemo").exists() and list(tmp_path.glob(".nemo*")) == []


def test_file_check_names_file_and_line(tmp_path):
    good = {"input": "p", "output": "".join(SFT.special_tokens)}
    path = tmp_path / "training.jsonl"
    path.write_text(json.dumps(good) + "\n{oops\n" + json.dumps({"input": "", "output": good["output"]}) + "\n")
    lines, problems = file_problems(path, SFT.special_tokens)
    assert lines == 3
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:2", f"{path}:3"]
    assert "field 'input'" in problems[1]


def test_cli_export_nemo(dataset_dir, tmp_path, data_dir, capsys):
    out = tmp_path / "nemo"
    assert (
        sftc(
            [
                "export-nemo",
                "--dataset-dir",
                str(dataset_dir),
                "--output-dir",
                str(out),
                "--max-samples",
                "3",
                "--skip-tokenizer",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["counts"] == {"train": 3, "validation": 3, "test": 3}
    assert (
        sftc(
            [
                "export-nemo",
                "--dataset-dir",
                str(dataset_dir),
                "--output-dir",
                str(tmp_path / "x"),
                "--tokenizer",
                str(tmp_path / "none"),
            ]
        )
        == 2
    )
    assert "tokenizer directory not found" in capsys.readouterr().err
    assert sftc(["export-nemo", "--dataset-dir", str(tmp_path / "nothing"), "--output-dir", str(tmp_path / "y")]) == 2
    assert "sftc build-dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        sftc(
            [
                "export-nemo",
                "--dataset-dir",
                str(dataset_dir),
                "--output-dir",
                str(out),
                "--skip-tokenizer",
                "--tokenizer",
                "t",
            ]
        )
    assert info.value.code == 2
