"""The chain runner behind `sftc run`, `sftc rerun` and `cpu_validation`, on stand-in assets through a
real (temporary) Dagster instance: ordering across partitions definitions, nothing redone on a second
pass, a window re-run replacing exactly its partitions, and the validation report's verdicts."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from orchestration_standins import CHAIN, THESIS_MONTHS, standin_chain, standin_file

from sftc_core.months import months_between
from sftc_jobs.chain import (
    ALL_PARTITIONS,
    contiguous_ranges,
    materialize_chain,
    plan_segments,
)
from sftc_jobs.commands.chain import window_forced, window_months
from sftc_jobs.jobs import chain_keys, run_validation
from sftc_platform.partitions import month_partitions
from sftc_platform.routing import NODE_TAG

K = dg.AssetKey


@pytest.fixture
def instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.DagsterInstance.ephemeral(tempdir=str(home)) as instance:
        yield instance


def _file_runs(data_dir, asset, partitions):
    return {p: standin_file(data_dir, asset, p).read_text() for p in partitions}


def test_segments_follow_dependencies_and_partitions_definitions():
    chain = standin_chain()
    assets = chain.assets
    keys = chain_keys(chain)
    assert K("nemo_model") not in keys and K("validation_report") in keys
    segments = plan_segments(assets, keys)
    assert [tuple(k.to_user_string() for k in s.keys) for s in segments] == [
        ("raw_xml", "thesis_jsonl"),
        ("hf_splits", "base_checkpoint", "bf16_checkpoint", "nemo_jsonl", "sft_model"),
        ("eval_csv",),
        ("backtest_report", "validation_report"),
    ]
    seen: set = set()
    for segment in segments:
        for key in segment.keys:
            assert (assets[key].deps & set(keys)) <= seen | set(segment.keys)
            assert assets[key].partitions_def == segment.partitions_def
        seen |= set(segment.keys)


def test_contiguous_ranges_split_at_gaps():
    partitions = month_partitions(months_between("2012-01", "2012-12"))
    assert contiguous_ranges(["2012-05", "2012-01", "2012-02", "2012-12", "2012-04"], partitions) == [
        ("2012-01", "2012-02"),
        ("2012-04", "2012-05"),
        ("2012-12", "2012-12"),
    ]


def test_first_pass_materializes_everything_in_order_second_pass_nothing(data_dir, instance):
    chain = standin_chain()
    keys = chain_keys(chain)
    first = materialize_chain(chain, instance, keys)
    assert first.success
    # One run per segment: each partitioned segment as one range run (single-run backfill), upstream first.
    assert [(tuple(k.path[-1] for k in r.keys), r.partition_range) for r in first.runs] == [
        (("raw_xml", "thesis_jsonl"), THESIS_MONTHS),
        (("hf_splits", "base_checkpoint", "bf16_checkpoint", "nemo_jsonl", "sft_model"), None),
        (("eval_csv",), ("2012-09", "2012-12")),
        (("backtest_report", "validation_report"), None),
    ]
    for run in first.runs:
        tags = instance.get_run_by_id(run.run_id).tags
        assert tags[NODE_TAG] == "cpu" and "dagster-k8s/config" not in tags  # executed in this process: no pod to place
    assert instance.get_materialized_partitions(K("thesis_jsonl")) == set(months_between(*THESIS_MONTHS))
    assert all(instance.get_latest_materialization_event(k) for k in keys)
    # Checks ran inside the runs of their assets.
    check_runs = [r for r in first.runs if K("thesis_jsonl") in r.keys]
    evaluations = instance.get_records_for_run(
        check_runs[0].run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    assert [e.event_log_entry.dagster_event.event_specific_data.check_name for e in evaluations] == [
        "accepted_plus_rejected_equals_read"
    ]

    second = materialize_chain(chain, instance, keys)
    assert second.success and second.runs == []
    assert set(second.up_to_date) == set(keys)


def test_missing_partition_and_new_code_version_are_redone(data_dir, instance):
    chain = standin_chain()
    keys = chain_keys(chain)
    assert materialize_chain(chain, instance, keys).success
    instance.wipe_assets([K("eval_csv")])
    again = materialize_chain(chain, instance, keys)
    # eval_csv is missing again: it is redone, then what reads it (now older than its input).
    assert [tuple(k.path[-1] for k in r.keys) for r in again.runs] == [
        ("eval_csv",),
        ("backtest_report", "validation_report"),
    ]
    assert K("sft_model") in again.up_to_date

    changed = standin_chain(code_versions={"hf_splits": "2"})
    redo = materialize_chain(changed, instance, keys)
    redone = [tuple(k.path[-1] for k in r.keys) for r in redo.runs]
    # New code for hf_splits: it and everything reading it, directly or not, follows.
    assert redone == [
        ("hf_splits", "base_checkpoint", "bf16_checkpoint", "nemo_jsonl", "sft_model"),
        ("eval_csv",),
        ("backtest_report", "validation_report"),
    ]
    assert redo.success and redo.runs[1].partition_range == ("2012-09", "2012-12")


def test_window_rerun_replaces_exactly_its_partitions(data_dir, instance):
    chain = standin_chain()
    keys = chain_keys(chain)
    first = materialize_chain(chain, instance, keys)
    all_months = months_between(*THESIS_MONTHS)
    before = _file_runs(data_dir, "thesis_jsonl", all_months)
    before_raw = _file_runs(data_dir, "raw_xml", all_months)

    window = window_months("2012-03", "2012-10")
    forced = window_forced(chain, keys, window)
    assert forced[K("raw_xml")] == set(window) and forced[K("thesis_jsonl")] == set(window)
    assert forced[K("eval_csv")] == {"2012-09", "2012-10"}
    assert forced[K("hf_splits")] == ALL_PARTITIONS and forced[K("backtest_report")] == ALL_PARTITIONS

    rerun = materialize_chain(chain, instance, keys, forced=forced)
    assert rerun.success
    after = _file_runs(data_dir, "thesis_jsonl", all_months)
    after_raw = _file_runs(data_dir, "raw_xml", all_months)
    for month in all_months:
        changed = month in window
        assert (after[month] != before[month]) == changed, month
        assert (after_raw[month] != before_raw[month]) == changed, month
    assert rerun.runs[0].partition_range == ("2012-03", "2012-10")
    rerun_assets = {k.path[-1] for r in rerun.runs for k in r.keys}
    assert {"hf_splits", "sft_model", "eval_csv", "backtest_report"} <= rerun_assets
    # The first pass's files for the months outside the window are still the first pass's.
    assert after["2012-01"] == first.runs[0].run_id


def test_window_outside_the_profile_and_bad_months_are_clear_errors():
    chain = standin_chain()
    with pytest.raises(ValueError, match="no monthly partition"):
        window_forced(chain, chain_keys(chain), window_months("1999-01", "1999-02"))
    with pytest.raises(ValueError, match=r"--from '2012-13'.*YYYY-MM"):
        window_months("2012-13", "2012-14")
    with pytest.raises(ValueError, match="ends before it starts"):
        window_months("2012-05", "2012-01")


def test_validation_report_ready_when_every_stage_passes(data_dir, instance):
    assert run_validation(standin_chain(), instance, "validation-1", log=None)
    report = json.loads((data_dir / "reports" / "validation_report.json").read_text())
    assert report["ready_for_gpu"] is True and report["validation_run"] == "validation-1"
    assert [s["asset"] for s in report["stages"]] == [k for k in CHAIN if k != "nemo_model"]
    assert {s["status"] for s in report["stages"]} == {"PASS"}
    thesis = next(s for s in report["stages"] if s["asset"] == "thesis_jsonl")
    assert thesis["checks"][0]["name"] == "accepted_plus_rejected_equals_read" and thesis["checks"][0]["passed"]
    assert len(thesis["partitions"]) == 12 and thesis["figures"]["rows"] == 12
    markdown = (data_dir / "reports" / "validation_report.md").read_text()
    assert "Ready for GPU deployment: YES" in markdown and "nemo_model" in markdown
    assert (
        "## Part 1, the toy chain: PASS" in markdown and "## Part 2, the GPU plan of the full profile: PASS" in markdown
    )
    assert "### GPU memory: PASS" in markdown and "### data volume: PASS" in markdown  # the arithmetic is shown
    estimate = report["gpu_plan"]["estimate"]  # what the full profile's GPU run will cost, shown beside the verdict
    assert estimate["gpu_hours"] > 0 and estimate["cost"] > 0 and "## What the GPU run will cost" in markdown
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"sftc/validation_run": "validation-1"}))
    assert len(runs) == 5  # four chain segments and the report


def test_preflight_json_and_the_report_list_the_same_gpu_plan(data_dir, instance, capsys):
    from sftc_jobs.cli import main as sftc_main

    assert run_validation(standin_chain(), instance, "validation-3", log=None)
    report = json.loads((data_dir / "reports" / "validation_report.json").read_text())
    code = sftc_main(["preflight", "--json"])
    preflight = json.loads(capsys.readouterr().out)
    # The stand-ins' files are no checkpoint: this node's item says so; the plan's verdict is the report's.
    assert code == (0 if preflight["ready"] else 1)
    assert {c["name"] for c in preflight["checks"] if c["status"] == "FAIL"} <= {"base checkpoint"}
    plan_items = [c for c in preflight["checks"] if c["scope"] != "this node"]
    assert plan_items == report["gpu_plan"]["checks"]
    assert [c["name"] for c in plan_items][:3] == ["model architecture", "parallel layout", "GPU memory"]


def test_validation_report_says_no_and_why_when_a_stage_fails(data_dir, instance):
    assert not run_validation(standin_chain(failing=("sft_model",)), instance, "validation-2", log=None)
    report = json.loads((data_dir / "reports" / "validation_report.json").read_text())
    status = {s["asset"]: s["status"] for s in report["stages"]}
    assert status["hf_splits"] == "PASS"
    assert status["sft_model"] == "FAIL" and status["eval_csv"] == "NOT RUN" and status["backtest_report"] == "NOT RUN"
    assert (
        report["ready_for_gpu"] is False
        and report["toy_chain"]["passed"] is False
        and report["gpu_plan"]["passed"] is True
    )
    assert any("sft_model failed" in reason and "told to fail" in reason for reason in report["reasons"])
    assert "eval_csv was not materialized (downstream of sft_model)" in report["reasons"]
    assert "Ready for GPU deployment: NO" in (data_dir / "reports" / "validation_report.md").read_text()
    check = instance.get_latest_materialization_event(K("validation_report"))
    assert check.asset_materialization.metadata["ready_for_gpu"].value is False
