"""Staleness that matches the files and the settings: a changed setting or config file changes the version of
exactly the assets that read it (the chain then redoes them and what reads them, nothing else); an artifact
whose files are missing or changed outside the chain is redone, never "up to date"; the validation report
never passes a stage whose files are not there.

The version rule is checked on the real code location; what the chain redoes, on the stand-in chain (the
real keys, partitions and dependencies, the real version rule and markers, in milliseconds)."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import pytest
from orchestration_standins import standin_file, standin_settings, standin_stages
from stage_helpers import settings_with

from sftc_core.configs import CONFIG_DIR
from sftc_core.settings import load_settings
from sftc_jobs.chain import Chain, materialize_chain
from sftc_jobs.jobs import chain_keys
from sftc_jobs.location import build_definitions
from sftc_platform.metadata import config_hash

K = dg.AssetKey
HF_SEGMENT_AND_DOWNSTREAM = [
    ("hf_splits", "base_checkpoint", "bf16_checkpoint", "nemo_jsonl", "sft_model"),
    ("eval_csv",),
    ("backtest_report", "validation_report"),
]


def _code_versions(settings) -> dict[str, str]:
    defs = build_definitions(settings)
    versions = {}
    for definition in defs.assets:
        if isinstance(definition, dg.AssetsDefinition):
            versions |= {key.to_user_string(): definition.get_asset_spec(key).code_version for key in definition.keys}
    return versions


def _changed(before: dict, after: dict) -> set[str]:
    return {asset for asset in before if before[asset] != after[asset]}


@pytest.fixture
def configs(tmp_path):
    """A copy of configs/ to edit."""
    copy = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, copy)
    return copy


def test_a_setting_changes_the_version_of_exactly_the_assets_reading_it(data_dir, configs):
    """On the real code location: the training end date is read by hf_splits and the toy base (its pretraining window)
    only; the embargo (sft_config.yaml) by what splits, exports and trains on the SFT format; the backtest's cost by the
    backtest alone."""
    env = {"SFTC_DATA_DIR": str(data_dir)}
    base = _code_versions(load_settings(env=env, dotenv_path=data_dir / "none"))
    assert all(base.values())
    later = _code_versions(load_settings(env={**env, "TRAIN_END_DATE": "2012-03-30"}, dotenv_path=data_dir / "none"))
    assert _changed(base, later) == {"hf_splits", "base_checkpoint"}

    sft = configs / "sft_config.yaml"
    sft.write_text(sft.read_text().replace("embargo_days: 14", "embargo_days: 21"))
    embargo = _code_versions(load_settings(env=env, dotenv_path=data_dir / "none", config_dir=configs))
    assert _changed(base, embargo) == {"hf_splits", "nemo_jsonl", "sft_model"}

    backtest = configs / "backtest_config.yaml"
    backtest.write_text(backtest.read_text().replace("cost_bps: 5", "cost_bps: 7"))
    cost = _code_versions(load_settings(env=env, dotenv_path=data_dir / "none", config_dir=configs))
    assert _changed(embargo, cost) == {"backtest_report"}


def test_a_bound_on_the_wait_to_start_makes_no_artifact_stale(data_dir, configs):
    """launch.max_pending says how long a job may wait, not what it makes: sft_model and nemo_model keep their
    versions; the validation report, which reads every profile whole for the GPU plan, is the one redone."""
    env = {"SFTC_DATA_DIR": str(data_dir)}
    base = _code_versions(load_settings(env=env, dotenv_path=data_dir / "none", config_dir=configs))
    toy = configs / "profiles" / "toy.yaml"
    toy.write_text(toy.read_text().replace("max_pending: null", 'max_pending: "01:00:00"'))
    bounded = load_settings(env=env, dotenv_path=data_dir / "none", config_dir=configs)
    assert bounded.profile.launch.max_pending == "01:00:00"
    assert _changed(base, _code_versions(bounded)) == {"validation_report"}


@pytest.fixture
def instance(tmp_path):
    with dg.DagsterInstance.ephemeral(tempdir=str(tmp_path / "dagster_home")) as instance:
        yield instance


def _chain(settings) -> Chain:
    return Chain.of(build_definitions(settings, standin_stages()), settings)


def _redone(result) -> list[tuple[str, ...]]:
    assert result.success
    return [tuple(k.to_user_string() for k in run.keys) for run in result.runs]


def test_a_changed_setting_redoes_exactly_what_it_affects(data_dir, instance, monkeypatch):
    settings = standin_settings()
    keys = chain_keys(_chain(settings))
    assert materialize_chain(_chain(settings), instance, keys).success
    assert _redone(materialize_chain(_chain(settings), instance, keys)) == []

    monkeypatch.setenv("TRAIN_END_DATE", "2012-03-30")
    later = standin_settings()
    again = materialize_chain(_chain(later), instance, keys)
    assert _redone(again) == HF_SEGMENT_AND_DOWNSTREAM
    assert {K("raw_xml"), K("thesis_jsonl")} <= set(again.up_to_date)
    splits_marker = json.loads((later.paths.hf_splits / ".sftc-artifact.json").read_text())
    assert splits_marker["config_hash"] == config_hash(later, "hf_splits") != config_hash(settings, "hf_splits")

    # A profile field read by training alone: sft_model and what reads it.
    longer = settings_with(later, training={"max_steps": later.profile.training.max_steps + 1})
    assert _redone(materialize_chain(_chain(longer), instance, keys)) == [
        ("sft_model",),
        ("eval_csv",),
        ("backtest_report", "validation_report"),
    ]
    assert _redone(materialize_chain(_chain(longer), instance, keys)) == []


def test_files_lost_or_changed_outside_the_chain_are_redone(data_dir, instance):
    settings = standin_settings()
    chain = _chain(settings)
    keys = chain_keys(chain)
    assert materialize_chain(chain, instance, keys).success
    first_run = standin_file(data_dir, "sft_model", None).read_text()

    # A killed `sftc train` of old left models/sft empty: that is not an up-to-date sft_model.
    for path in settings.paths.sft_model.iterdir():
        path.unlink()
    redo = materialize_chain(chain, instance, keys)
    assert _redone(redo) == [("sft_model",), ("eval_csv",), ("backtest_report", "validation_report")]
    assert standin_file(data_dir, "sft_model", None).read_text() != first_run

    # A month's records edited by hand: that month's thesis_jsonl and everything downstream of it.
    month = standin_file(data_dir, "thesis_jsonl", "2012-05")
    month.write_text(month.read_text() + "edited\n")
    redo = materialize_chain(chain, instance, keys)
    assert [(r[0], run.partition_range) for r, run in zip(_redone(redo), redo.runs)][:1] == [
        ("thesis_jsonl", ("2012-05", "2012-05"))
    ]
    assert _redone(redo)[1:] == HF_SEGMENT_AND_DOWNSTREAM
    assert _redone(materialize_chain(chain, instance, keys)) == []


def test_the_validation_report_fails_a_stage_whose_files_are_gone(data_dir, instance):
    settings = standin_settings()
    chain = _chain(settings)
    assert materialize_chain(chain, instance, chain_keys(chain)).success
    report = json.loads((settings.paths.reports / "validation_report.json").read_text())
    assert report["ready_for_gpu"] is True

    shutil.rmtree(settings.paths.sft_model)
    settings.paths.sft_model.mkdir()  # as a killed fine-tune of old left it: there, and empty
    alone = dg.materialize(
        chain.definitions, instance=instance, resources=chain.resources, selection=["validation_report"]
    )
    assert alone.success
    report = json.loads((settings.paths.reports / "validation_report.json").read_text())
    assert report["ready_for_gpu"] is False
    sft = next(stage for stage in report["stages"] if stage["asset"] == "sft_model")
    assert sft["status"] == "FAIL" and f"{settings.paths.sft_model} has no sftc marker" in sft["error"]
