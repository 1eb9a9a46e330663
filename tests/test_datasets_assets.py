"""hf_splits and nemo_jsonl materialized through a Dagster instance, on monthly JSONL written here."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
from stage_helpers import mark_as_written, settings_with, stage_definitions
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sftc_assets.sft_data import assets, nemo_export, splits
from sftc_assets.theses.parser import parse_corpus
from sftc_assets.theses.sample_corpus import write_sample_corpus
from sftc_core.configs import CorpusConfig, load_sft_config
from sftc_core.nemo_format import NEMO_FILES
from sftc_core.paths import ArtifactPaths
from sftc_core.settings import load_settings

SPECIAL_TOKENS_CHECK = dg.AssetCheckKey(dg.AssetKey("nemo_jsonl"), "special_tokens_in_every_line")


def write_monthly_jsonl(data_dir: Path) -> int:
    """The toy window's records as thesis_jsonl leaves them: data/jsonl/YYYY-MM.jsonl and .rejects.jsonl for
    every month of the profile (a rejects line in one), marked as thesis_jsonl's."""
    config = CorpusConfig(source="sample", tickers=["AAPL", "IBM"], per_month=3, seed=1, horizon_days=5)
    write_sample_corpus(data_dir / "raw_xml", "2010-01", "2012-12", config)
    records = parse_corpus(data_dir / "raw_xml").records
    paths = ArtifactPaths(data_dir)
    paths.jsonl.mkdir(parents=True)
    for month in load_settings().thesis_months:
        rows = [r for r in records if r["as_of_date"].startswith(month)]
        paths.jsonl_month(month).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        rejects = [{"source_file": "x.xml", "index": None, "reason": "malformed_xml"}] if month == "2010-01" else []
        paths.rejects_month(month).write_text("".join(json.dumps(r) + "\n" for r in rejects), encoding="utf-8")
        mark_as_written("thesis_jsonl", paths.jsonl_month(month), paths.rejects_month(month))
    return len(records)


def write_tokenizer(paths: ArtifactPaths) -> None:
    """A word-level tokenizer of the train split's texts where base_checkpoint keeps its tokenizer, marked as its."""
    texts = nemo_export.training_texts(paths.hf_splits, load_sft_config())
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    # the tags stay text: no special token of theirs
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<unk>", "</s>"]))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="</s>").save_pretrained(
        str(paths.base_checkpoint)
    )
    mark_as_written("base_checkpoint", paths.base_checkpoint)


def materialize(
    data_dir: Path, instance: dg.DagsterInstance, selection: list[str] | None = None, raise_on_error: bool = True
) -> dg.ExecuteInJobResult:
    return dg.materialize(
        stage_definitions(assets.defs), instance=instance, selection=selection, raise_on_error=raise_on_error
    )


def test_hf_splits_and_nemo_jsonl_materialize_with_checks(data_dir):
    total = write_monthly_jsonl(data_dir)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(data_dir, instance, selection=["hf_splits"])
    assert result.success
    # nemo_jsonl reads base_checkpoint's tokenizer: without it, it refuses to run and names what to build.
    refused = materialize(data_dir, instance, selection=["nemo_jsonl"], raise_on_error=False)
    assert not refused.success
    failure = refused.failure_data_for_node("nemo_jsonl").user_failure_data.description
    assert "base_fp8 is missing (re-materialize base_checkpoint)" in failure
    write_tokenizer(ArtifactPaths(data_dir))
    nemo = materialize(data_dir, instance, selection=["nemo_jsonl"])

    splits_meta = result.asset_materializations_for_node("hf_splits")[0].metadata
    counts = {name: splits_meta[f"{name}_count"].value for name in ("train", "validation", "test")}
    assert all(count > 0 for count in counts.values())
    assert (
        sum(counts.values()) + splits_meta["dropped_by_embargo"].value + splits_meta["outside_windows"].value == total
    )
    train_first, train_last = splits_meta["train_dates"].value.split("..")
    test_first, test_last = splits_meta["test_dates"].value.split("..")
    assert "2010-01-01" <= train_first < "2010-02-01" and train_last <= "2012-04-30"
    assert "2012-09-01" <= test_first and test_last <= "2012-12-31"
    assert "<action>" in splits_meta["preview"].value and splits_meta["git_commit"].value

    nemo_meta = nemo.asset_materializations_for_node("nemo_jsonl")[0].metadata
    assert [nemo_meta[f"{n}_lines"].value for n in ("train", "validation", "test")] == list(counts.values())
    assert nemo_meta["total_tokens_max"].value > nemo_meta["prompt_tokens_p95"].value > 0
    assert nemo_meta["truncated"].value == 0
    assert set(nemo_meta["token_stats"].value["tag_tokens"]) == set(load_sft_config().special_tokens)
    assert "### Response:" in nemo_meta["preview"].value

    checks = {
        e.check_name: e.passed for e in [*result.get_asset_check_evaluations(), *nemo.get_asset_check_evaluations()]
    }
    assert checks == {"splits_disjoint_and_ordered": True, "special_tokens_in_every_line": True}


def test_without_a_reachable_tokenizer_the_lines_are_written_unmeasured_and_checks_catch_bad_files(
    data_dir, tmp_path, monkeypatch
):
    """The full profile's release may sit on the GPU nodes only: nemo_jsonl then says it did not measure."""
    write_monthly_jsonl(data_dir)
    monkeypatch.setenv("SFTC_PROFILE", "full")
    settings = settings_with(
        partitions={"start": "2010-01", "end": "2012-12"}, model={"base_checkpoint_path": str(tmp_path / "unreachable")}
    )
    settings = settings.model_copy(
        update={
            "train_start_date": dt.date(2010, 1, 1),
            "train_end_date": dt.date(2012, 4, 30),
            "test_start_date": dt.date(2012, 9, 1),
            "test_end_date": dt.date(2012, 12, 31),
        }
    )
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(stage_definitions(assets.defs, settings), instance=instance)
    meta = result.asset_materializations_for_node("nemo_jsonl")[0].metadata
    assert meta["token_stats"].value == f"not measured: no tokenizer at {tmp_path / 'unreachable'}"
    paths = ArtifactPaths(data_dir)

    # A damaged file fails the check (without rerunning the asset).
    training = paths.nemo_jsonl / "training.jsonl"
    training.write_text(training.read_text() + '{"input": "x", "output": "no tags"}\n')
    check_only = dg.materialize(
        stage_definitions(assets.defs, settings),
        instance=instance,
        selection=dg.AssetSelection.checks(SPECIAL_TOKENS_CHECK),
        raise_on_error=False,  # a failed blocking check fails the run
    )
    assert not check_only.success
    evaluation = check_only.get_asset_check_evaluations()[0]
    assert not evaluation.passed and evaluation.metadata["problem_count"].value == 1


def test_the_splits_check_called_directly_reads_the_saved_splits(data_dir):
    write_monthly_jsonl(data_dir)
    paths, settings = ArtifactPaths(data_dir), load_settings()
    splits.build_dataset(paths.jsonl, paths.hf_splits, settings.sft, date_bounds=settings.date_bounds)
    result = assets.check_splits_disjoint_and_ordered(paths.hf_splits)
    assert result.passed and result.metadata["problem_count"].value == 0
    # an embargo longer than the gaps between the splits: both gaps are named
    summary = json.loads((paths.hf_splits / splits.SUMMARY_FILE).read_text())
    (paths.hf_splits / splits.SUMMARY_FILE).write_text(json.dumps({**summary, "embargo_days": 400}))
    result = assets.check_splits_disjoint_and_ordered(paths.hf_splits)
    assert not result.passed and result.metadata["problem_count"].value == 2
    assert all("the embargo is 400" in problem for problem in result.metadata["problems"].value)


def test_the_special_tokens_check_called_directly_names_the_line_without_them(tmp_path):
    tokens = load_sft_config().special_tokens
    for name in NEMO_FILES.values():
        (tmp_path / name).write_text(json.dumps({"input": "prompt", "output": " ".join(tokens)}) + "\n")
    result = assets.check_special_tokens_in_every_line(tmp_path, tokens)
    assert result.passed and (result.metadata["lines"].value, result.metadata["problem_count"].value) == (3, 0)
    with open(tmp_path / NEMO_FILES["validation"], "a") as fh:
        fh.write(json.dumps({"input": "prompt", "output": "no tags"}) + "\n")
    result = assets.check_special_tokens_in_every_line(tmp_path, tokens)
    assert not result.passed and (result.metadata["lines"].value, result.metadata["problem_count"].value) == (4, 1)
    assert result.metadata["problems"].value[0].startswith(f"{tmp_path / NEMO_FILES['validation']}:2: ")
