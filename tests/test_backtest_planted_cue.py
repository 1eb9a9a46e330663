"""The `planted_cue_recovered` check on the toy corpus: it passes when the predictions follow the desk notes of the
test theses and fails when they are scrambled, and a failure makes the validation report say NO.

The eval CSVs are written by hand here (real sample prices, real hf_splits from thesis records with the corpus's
own desk notes), so the check and the report are tested without training a model; the slow chain test trains one.
"""

from __future__ import annotations

import json
import random

import dagster as dg
import numpy as np
import pytest
from backtest_helpers import cued_records, write_hand_csv, write_training_pairs
from bokeh_sampledata import stocks
from stage_helpers import mark_as_written, settings_with, stage_definitions

from sftc_assets.backtest import assets as backtest_assets
from sftc_assets.reports import assets as report_assets
from sftc_assets.sft_data.splits import build_dataset
from sftc_assets.theses.sample_corpus import CUE_PHRASES
from sftc_core.settings import load_settings
from sftc_core.target_format import ACTIONS

TICKERS = ("AAPL", "MSFT", "IBM", "GOOG")


def _record(ticker: str, day: str, action: str, cue: str | None) -> dict:
    support = [f"{ticker} moved a little", *([CUE_PHRASES[cue][0]] if cue else [])]
    return {
        "id": f"{ticker.lower()}-{day}",
        "ticker": ticker,
        "as_of_date": day,
        "reasoning": "Plain.",
        "support": support,
        "action": action,
        "horizon_days": 5,
        "confidence": None,
        "source_file": f"{day[:4]}/{day[5:7]}/{ticker}.xml",
    }


def _test_rows(rng: random.Random) -> list[dict]:
    """96 test theses on real sessions of 2012-09..12, half with a desk note that names the action 80% of the time."""
    rows = []
    for ticker in TICKERS:
        raw = getattr(stocks, ticker)
        start = raw["date"].index("2012-09-04")
        for k in range(start, start + 72, 3):
            true = rng.choice(ACTIONS)
            cue = (
                (true if rng.random() < 0.8 else rng.choice([a for a in ACTIONS if a != true]))
                if rng.random() < 0.5
                else None
            )
            rows.append(
                {
                    "id": f"{ticker.lower()}-{raw['date'][k]}",
                    "ticker": ticker,
                    "as_of_date": raw["date"][k],
                    "true_action": true,
                    "cue": cue,
                    "horizon_days": "5",
                    "entry_date": raw["date"][k + 1],
                    "exit_date": raw["date"][k + 6],
                    "forward_return": repr(raw["adj_close"][k + 6] / raw["adj_close"][k + 1] - 1),
                    "return_status": "ok",
                }
            )
    return rows


def _write_inputs(data_dir, settings, predicted: list[str], rows: list[dict]) -> None:
    records = [
        _record("IBM", "2011-03-01", "HOLD", None),
        _record("IBM", "2012-06-01", "BUY", None),
    ]  # train, validation
    records += [_record(r["ticker"], r["as_of_date"], r["true_action"], r["cue"]) for r in rows]
    (data_dir / "jsonl").mkdir()
    (data_dir / "jsonl" / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    build_dataset(data_dir / "jsonl", settings.paths.hf_splits, settings.sft, date_bounds=settings.date_bounds)
    mark_as_written("hf_splits", settings.paths.hf_splits, settings=settings)
    for row, action in zip(rows, predicted):
        row |= {"predicted_action": action, "parse_ok": "true", "raw_output": f"<action>{action}</action>"}
    for month in ("2012-09", "2012-10", "2012-11", "2012-12"):
        in_month = sorted(
            (r for r in rows if r["as_of_date"].startswith(month)), key=lambda r: (r["as_of_date"], r["ticker"])
        )
        write_hand_csv(
            data_dir / "eval" / f"{month}.csv", [{k: v for k, v in r.items() if k != "cue"} for r in in_month]
        )
        mark_as_written("eval_csv", data_dir / "eval" / f"{month}.csv", settings=settings)


def _materialize(settings) -> dg.ExecuteInProcessResult:
    definitions = [*stage_definitions(backtest_assets.defs, settings), *stage_definitions(report_assets.defs, settings)]
    with dg.instance_for_test() as instance:
        return dg.materialize(definitions, instance=instance, raise_on_error=False)


def test_a_model_that_reads_the_desk_notes_passes(data_dir):
    settings, rng = load_settings(), random.Random(0)
    rows = _test_rows(rng)
    _write_inputs(data_dir, settings, [r["cue"] or rng.choice(ACTIONS) for r in rows], rows)
    result = _materialize(settings)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["planted_cue_recovered"].passed, checks["planted_cue_recovered"].description
    assert checks["planted_cue_recovered"].description.startswith("The planted cue came through: accuracy on the 4")
    metrics = json.loads((data_dir / "backtest" / "metrics.json").read_text())
    cue = metrics["planted_cue"]
    assert cue["cued_rows"] == sum(r["cue"] is not None for r in rows) and cue["follows_cue"] == 1.0
    assert (
        cue["cue_agrees_with_label"] == cue["cued"]["accuracy"]
    )  # following the note is right exactly when the note is
    report = (data_dir / "backtest" / "report.md").read_text()
    assert (
        "Toy corpus: these theses were generated" in report
        and "The figures test the plumbing, not a strategy." in report
    )
    assert "## Planted cue (toy corpus): theses with and without the desk note" in report and cue["verdict"] in report
    (materialization,) = [
        m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey("backtest_report")
    ]
    assert materialization.materialization.metadata["cued_rows"].value == cue["cued_rows"]


def test_scrambled_predictions_fail_the_check_and_the_validation_report_says_no(data_dir):
    settings, rng = load_settings(), random.Random(0)
    rows = _test_rows(rng)
    following = [r["cue"] or rng.choice(ACTIONS) for r in rows]
    scrambled = list(np.random.default_rng(1).permutation(following))  # the same predictions, on the wrong theses
    _write_inputs(data_dir, settings, scrambled, rows)
    write_training_pairs(settings.paths.nemo_jsonl, cued_records(), settings.sft)  # what a model would have read
    result = _materialize(settings)
    assert result.success  # the check does not block: validation_report still runs and says why
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["planted_cue_recovered"].passed and checks["backtest_sanity"].passed
    assert "The planted cue did not come through" in checks["planted_cue_recovered"].description
    report = json.loads((data_dir / "reports" / "validation_report.json").read_text())
    backtest = next(s for s in report["stages"] if s["asset"] == "backtest_report")
    assert backtest["status"] == "FAIL" and report["ready_for_gpu"] is False
    # The failed check is named with its description (the validation report names the cause).
    assert any(
        r.startswith("backtest_report failed: check(s) failed: planted_cue_recovered (") for r in report["reasons"]
    ), report["reasons"]
    # Its preconditions in the training data hold, so they are not the cause; the other stages did not run here.
    assert report["toy_chain"]["reasons"][-1] == (
        "planted_cue_recovered's preconditions hold: the cue reaches the prompts, the labels are not scrambled; "
        "not checked: the splits are ordered, training converged: none of those checked names the cause"
    )
    assert set(report["toy_chain"]["reasons"]) <= set(report["reasons"])
    assert "Ready for GPU deployment: NO" in (data_dir / "reports" / "validation_report.md").read_text()


def test_the_check_exists_only_where_a_cue_is_planted(data_dir):
    settings = load_settings()
    names = lambda s: {key.name for c in backtest_assets.defs(s).asset_checks for key in c.check_keys}  # noqa: E731
    assert "planted_cue_recovered" in names(settings)
    assert names(settings_with(settings, corpus={"cue_share": 0.0})) == {"backtest_sanity"}


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the toy chain with a real fine-tune: minutes on 2 shared cores
def test_a_chain_that_scrambles_the_training_labels_fails_the_check(data_dir):
    """The planted fault: the training targets' actions shuffled across theses (a misaligned join) after nemo_jsonl,
    then the real fine-tune, evaluation and backtest through the instance. The model cannot learn the note, the check
    fails, and the validation report says NO for that reason."""
    from sftc_jobs.chain import Chain, materialize_chain
    from sftc_jobs.jobs import chain_keys
    from sftc_jobs.location import build_definitions

    settings = load_settings()
    chain = Chain.of(build_definitions(settings), settings)
    keys = chain_keys(chain)
    data_half = [
        k
        for k in keys
        if k.to_user_string()
        in ("raw_xml", "thesis_jsonl", "hf_splits", "base_checkpoint", "nemo_jsonl", "bf16_checkpoint")
    ]
    with dg.instance_for_test() as instance:
        assert materialize_chain(chain, instance, data_half).success
        training = settings.paths.nemo_jsonl / "training.jsonl"
        lines = [json.loads(line) for line in training.read_text().splitlines()]
        actions = [line["output"].rsplit("<action>", 1)[1] for line in lines]
        random.Random(0).shuffle(actions)
        training.write_text(
            "".join(
                json.dumps({**line, "output": line["output"].rsplit("<action>", 1)[0] + "<action>" + action}) + "\n"
                for line, action in zip(lines, actions)
            )
        )
        mark_as_written(
            "nemo_jsonl", settings.paths.nemo_jsonl, settings=settings
        )  # as a nemo_jsonl with that bug would write it
        result = materialize_chain(chain, instance, [k for k in keys if k not in data_half])
        assert result.success
    metrics = json.loads((data_dir / "backtest" / "metrics.json").read_text())
    assert metrics["planted_cue"]["recovered"] is False, metrics["planted_cue"]
    report = json.loads((data_dir / "reports" / "validation_report.json").read_text())
    assert report["ready_for_gpu"] is False
    reason, cause = report["toy_chain"]["reasons"]  # the GPU plan's warnings follow them in report["reasons"]
    assert report["reasons"][:2] == [reason, cause]
    assert reason.startswith("backtest_report failed: check(s) failed: planted_cue_recovered ("), report["reasons"]
    # The cause is named, not only the symptom: the training targets' actions no longer follow their notes.
    assert cause.startswith("planted_cue_recovered's preconditions that do not hold: the labels are not"), cause
