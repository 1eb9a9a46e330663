"""hf_splits and nemo_jsonl materialized through a Dagster instance, on monthly JSONL written here."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
from stage_helpers import stage_definitions
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sftc_assets.sft_data import assets, nemo_export
from sftc_assets.theses.parser import parse_corpus
from sftc_assets.theses.sample_corpus import write_sample_corpus
from sftc_core.configs import CorpusConfig, load_sft_config
from sftc_core.paths import ArtifactPaths

SPECIAL_TOKENS_CHECK = dg.AssetCheckKey(dg.AssetKey("nemo_jsonl"), "special_tokens_in_every_line")


def write_monthly_jsonl(data_dir: Path) -> int:
    """The toy window's records as thesis_jsonl lays them out: data/jsonl/YYYY-MM.jsonl (+ a rejects file)."""
    config = CorpusConfig(source="sample", tickers=["AAPL", "IBM"], per_month=3, seed=1, horizon_days=5)
    write_sample_corpus(data_dir / "raw_xml", "2010-01", "2012-12", config)
    records = parse_corpus(data_dir / "raw_xml").records
    paths = ArtifactPaths(data_dir)
    paths.jsonl.mkdir(parents=True)
    for month in sorted({r["as_of_date"][:7] for r in records}):
        rows = [r for r in records if r["as_of_date"].startswith(month)]
        paths.jsonl_month(month).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    paths.rejects_month("2010-01").write_text(json.dumps({"source_file": "x.xml", "index": None, "reason": "malformed_xml"}) + "\n")
    return len(records)


def materialize(data_dir: Path, instance: dg.DagsterInstance, selection: list[str] | None = None) -> dg.ExecuteInJobResult:
    return dg.materialize(stage_definitions(assets.defs), instance=instance, selection=selection)


def test_hf_splits_and_nemo_jsonl_materialize_with_checks(data_dir):
    total = write_monthly_jsonl(data_dir)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(data_dir, instance)
    assert result.success

    splits_meta = result.asset_materializations_for_node("hf_splits")[0].metadata
    counts = {name: splits_meta[f"{name}_count"].value for name in ("train", "validation", "test")}
    assert all(count > 0 for count in counts.values())
    assert sum(counts.values()) + splits_meta["dropped_by_embargo"].value + splits_meta["outside_windows"].value == total
    train_first, train_last = splits_meta["train_dates"].value.split("..")
    test_first, test_last = splits_meta["test_dates"].value.split("..")
    assert "2010-01-01" <= train_first < "2010-02-01" and train_last <= "2012-04-30"
    assert "2012-09-01" <= test_first and test_last <= "2012-12-31"
    assert "<action>" in splits_meta["preview"].value and splits_meta["git_commit"].value

    nemo_meta = result.asset_materializations_for_node("nemo_jsonl")[0].metadata
    assert [nemo_meta[f"{n}_lines"].value for n in ("train", "validation", "test")] == list(counts.values())
    assert nemo_meta["token_stats"].value == f"not measured: no tokenizer at {data_dir / 'checkpoints' / 'base_fp8'}"
    assert "### Response:" in nemo_meta["preview"].value

    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"splits_disjoint_and_ordered": True, "special_tokens_in_every_line": True}


def test_token_stats_appear_once_base_checkpoint_has_a_tokenizer_and_checks_catch_bad_files(data_dir):
    write_monthly_jsonl(data_dir)
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(data_dir, instance).success
    paths = ArtifactPaths(data_dir)
    texts = [line for name in nemo_export.NEMO_FILES.values() for line in (paths.nemo_jsonl / name).read_text().splitlines()]
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<unk>", "</s>", *load_sft_config().special_tokens]))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="</s>").save_pretrained(str(paths.base_checkpoint))

    result = materialize(data_dir, instance, selection=["nemo_jsonl"])
    meta = result.asset_materializations_for_node("nemo_jsonl")[0].metadata
    assert meta["total_tokens_max"].value > meta["prompt_tokens_p95"].value > 0
    assert meta["truncated"].value == 0 and meta["token_stats"].value["special_tokens_not_single"] == []

    # A damaged file fails the check (without rerunning the asset).
    training = paths.nemo_jsonl / "training.jsonl"
    training.write_text(training.read_text() + '{"input": "x", "output": "no tags"}\n')
    check_only = dg.materialize(
        stage_definitions(assets.defs),
        instance=instance,
        selection=dg.AssetSelection.checks(SPECIAL_TOKENS_CHECK),
        raise_on_error=False,  # a failed blocking check fails the run
    )
    assert not check_only.success
    evaluation = check_only.get_asset_check_evaluations()[0]
    assert not evaluation.passed and evaluation.metadata["problem_count"].value == 1
