"""The eval CSV: its exact format, the strict reader, the test split, and `sftc evaluate` / the eval_csv asset
end to end."""

from __future__ import annotations

import csv
import io
import re
import shutil

import datasets
import numpy as np
import pandas as pd
import pytest

from sftc_assets.checkpoints.toy_model import make_toy_checkpoint
from sftc_assets.evaluation.evaluate import (
    build_eval_frame,
    label_forward_returns,
    load_test_records,
)
from sftc_assets.evaluation.results import EVAL_COLUMNS, read_eval_csv, write_eval_csv
from sftc_assets.sft_data.prompts import build_example
from sftc_core.configs import load_sft_config
from sftc_core.market import load_sample_prices
from sftc_jobs.cli import main as sftc
from sftc_platform.prices import LocalPriceSource

HEADER = ",".join(EVAL_COLUMNS)


def _record(i: int, ticker: str, as_of: str, action: str, horizon: int = 5) -> dict:
    thesis = {
        "ticker": ticker,
        "as_of_date": as_of,
        "horizon_days": horizon,
        "support": [f"Close {100 + i}"],
        "reasoning": "r",
        "action": action,
    }
    return {
        "id": f"{ticker}-{as_of}-{i}",
        "ticker": ticker,
        "as_of_date": as_of,
        "action": action,
        "horizon_days": horizon,
        **build_example(thesis, load_sft_config()),
    }


RECORDS = pd.DataFrame(
    [
        _record(0, "MSFT", "2012-10-26", "SELL"),
        _record(1, "AAPL", "2012-10-26", "BUY"),
        _record(2, "ZZZ", "2012-09-14", "HOLD"),
        _record(3, "AAPL", "2012-11-21", "STRONG_BUY", horizon=3),
        _record(4, "AAPL", "2013-02-27", "SELL"),
    ]
)
OUTPUTS = [
    "<reasoning>weak</reasoning><action>SELL</action>",
    'Says "buy", then\nAction: buy, surely',
    "",
    "<action> strong buy </action>",
    "no idea",
]


@pytest.fixture
def source(tmp_path):
    return LocalPriceSource(tmp_path / "prices", sample_fallback=True)


def test_the_file_is_the_spec_format(tmp_path, source):
    frame = build_eval_frame(RECORDS, OUTPUTS, label_forward_returns(RECORDS, source), load_sft_config().target_format)
    path = write_eval_csv(frame, tmp_path / "eval.csv")
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == HEADER
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["id"] for r in rows] == [
        "ZZZ-2012-09-14-2",
        "AAPL-2012-10-26-1",
        "MSFT-2012-10-26-0",
        "AAPL-2012-11-21-3",
        "AAPL-2013-02-27-4",
    ]
    by_id = {r["id"]: r for r in rows}
    quoted = by_id["AAPL-2012-10-26-1"]
    assert quoted["raw_output"] == OUTPUTS[1]  # newline, comma and quotes survive the quoting
    assert (quoted["predicted_action"], quoted["parse_ok"], quoted["true_action"]) == ("BUY", "true", "BUY")
    assert (quoted["entry_date"], quoted["exit_date"]) == ("2012-10-31", "2012-11-07")  # Sandy closed 29 and 30
    expected = load_sample_prices("AAPL").set_index("date")["adjusted_close"]
    assert float(quoted["forward_return"]) == expected["2012-11-07"] / expected["2012-10-31"] - 1  # full precision
    unknown = by_id["ZZZ-2012-09-14-2"]
    assert (unknown["predicted_action"], unknown["parse_ok"], unknown["forward_return"], unknown["return_status"]) == (
        "",
        "false",
        "",
        "unknown_ticker",
    )
    assert (unknown["entry_date"], unknown["exit_date"]) == ("2012-09-17", "2012-09-24")
    short = by_id["AAPL-2012-11-21-3"]
    assert (short["horizon_days"], short["entry_date"], short["exit_date"], short["predicted_action"]) == (
        "3",
        "2012-11-23",
        "2012-11-28",
        "STRONG_BUY",
    )
    late = by_id["AAPL-2013-02-27-4"]
    assert (late["forward_return"], late["return_status"], late["exit_date"]) == ("", "beyond_data", "2013-03-07")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the atomic write left no temp file


def test_generation_runs_on_the_configured_cpu_threads(source, monkeypatch):
    """The in-process fallback generates with `cpu_threads` torch threads, and gives the previous count back."""
    import torch

    from sftc_assets.evaluation import answers, evaluate

    seen = []

    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size, on_batch=None):
        seen.append(torch.get_num_threads())  # a stand-in for the model: only the thread count is under test
        return OUTPUTS[: len(prompts)]

    monkeypatch.setattr(answers, "generate_greedy", fake_generate)
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    in_process = answers.InProcessAnswers(None, None, max_new_tokens=4, batch_size=2, cpu_threads=target, about={})
    frame = evaluate.evaluate_records(RECORDS, in_process, source, load_sft_config())
    assert seen == [target] and torch.get_num_threads() == before
    predicted = dict(zip(frame["id"], frame["predicted_action"].fillna("")))
    assert predicted == {
        "MSFT-2012-10-26-0": "SELL",
        "AAPL-2012-10-26-1": "BUY",
        "ZZZ-2012-09-14-2": "",
        "AAPL-2012-11-21-3": "STRONG_BUY",
        "AAPL-2013-02-27-4": "",
    }


def test_read_back_gives_the_same_values(tmp_path, source):
    frame = build_eval_frame(RECORDS, OUTPUTS, label_forward_returns(RECORDS, source), load_sft_config().target_format)
    back = read_eval_csv(write_eval_csv(frame, tmp_path / "eval.csv"))
    for column in EVAL_COLUMNS:
        if column == "as_of_date":
            assert back[column].dt.strftime("%Y-%m-%d").tolist() == frame[column].tolist()
        elif column == "forward_return":
            np.testing.assert_array_equal(back[column].to_numpy(), frame[column].to_numpy())
        else:
            assert back[column].tolist() == frame[column].tolist(), column


def _valid_csv(tmp_path, source) -> str:
    frame = build_eval_frame(RECORDS, OUTPUTS, label_forward_returns(RECORDS, source), load_sft_config().target_format)
    return write_eval_csv(frame, tmp_path / "valid.csv").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace(",true_action,", ",truth,"), r"missing column\(s\) true_action"),
        (
            lambda t: t.replace(",STRONG_BUY,STRONG_BUY,", ",ACCUMULATE,STRONG_BUY,"),
            r"row 4, column true_action: 'ACCUMULATE' is not an action",
        ),
        (
            lambda t: t.replace(",STRONG_BUY,STRONG_BUY,", ",STRONG_BUY,MOON,"),
            r"row 4, column predicted_action: 'MOON'",
        ),
        (lambda t: t.replace("2012-11-21,", "2012-11-31,"), r"row 4, column as_of_date: '2012-11-31' is not a date"),
        (
            lambda t: t.replace("2012-11-23,2012-11-28", "23/11/2012,2012-11-28"),
            r"row 4, column entry_date: '23/11/2012'",
        ),
        (
            lambda t: t.replace("2012-11-23,2012-11-28", "1600-11-23,2012-11-28"),
            r"row 4, column entry_date: '1600-11-23' is not a date",
        ),
        (lambda t: _bad_return(t, "NA"), r"row 3, column forward_return: 'NA' is not a number"),
        (lambda t: t.replace(",unknown_ticker", ",delisted"), r"row 1, column return_status: 'delisted'"),
        (lambda t: _bad_return(t), r"row 3, column forward_return: 'abc' is not a number"),
        (
            lambda t: t.replace("MSFT-2012-10-26-0,", "AAPL-2012-10-26-1,"),
            r"row 3, column id: 'AAPL-2012-10-26-1' appears on an earlier row",
        ),
        (lambda t: _bad_return(t, "nan"), r"row 3, column forward_return: 'nan' is not a number"),
        (lambda t: t.replace("</action>,5,", "</action>,0x5,"), r"row 3, column horizon_days: '0x5' is not a whole"),
        (lambda t: _on_msft_row(t, lambda line: line + ",extra"), r"row 3 has 13 fields, the header 12 \('MSFT-"),
        (lambda t: t.replace(",,unknown_ticker", ",unknown_ticker"), r"row 1 has 11 fields, the header 12"),
        (
            lambda t: t.replace(",,unknown_ticker", ",,ok"),
            r"row 1, column forward_return: .* is empty but return_status is ok",
        ),
        (
            lambda t: t.replace("2012-11-23,2012-11-28", "2012-11-21,2012-11-28"),
            r"row 4, column entry_date: .* not after as_of_date",
        ),
        (
            lambda t: t.replace(",STRONG_BUY,true,", ",STRONG_BUY,yes,"),
            r"row 4, column parse_ok: 'yes' must be true or false",
        ),
        (
            lambda t: t.replace(",STRONG_BUY,true,", ",STRONG_BUY,false,"),
            r"row 4, column parse_ok: .* disagrees with predicted_action",
        ),
    ],
)
def test_bad_input_names_file_row_and_column(tmp_path, source, edit, message):
    text = _valid_csv(tmp_path, source)
    changed = edit(text)
    assert changed != text
    bad = tmp_path / "bad.csv"
    bad.write_text(changed, encoding="utf-8")
    for raw_output in (True, False):  # the backtest's read, without the model's text, is as strict
        with pytest.raises(ValueError, match=r"bad\.csv: " + message):
            read_eval_csv(bad, raw_output=raw_output)


def _on_msft_row(text: str, edit) -> str:
    """`edit` applied to the MSFT row (data row 3, after a row whose quoted raw_output holds a newline)."""
    return "\n".join(edit(line) if line.startswith("MSFT-") else line for line in text.split("\n"))


def _bad_return(text: str, value: str = "abc") -> str:
    """The MSFT row with forward_return `value`."""
    return _on_msft_row(text, lambda line: line.rsplit(",", 2)[0] + f",{value},ok")


def test_text_stays_text_and_the_backtest_leaves_the_model_text_out(tmp_path, source):
    frame = build_eval_frame(RECORDS, OUTPUTS, label_forward_returns(RECORDS, source), load_sft_config().target_format)
    frame.loc[frame["ticker"] == "ZZZ", ["id", "ticker"]] = ["007", "NA"]  # like a number, like a gap
    path = write_eval_csv(frame, tmp_path / "eval.csv")
    whole, lean = read_eval_csv(path), read_eval_csv(path, raw_output=False)
    assert (whole["id"].iloc[0], whole["ticker"].iloc[0]) == ("007", "NA")
    pd.testing.assert_frame_equal(lean, whole.drop(columns="raw_output"))
    # As a spreadsheet may save it: a byte-order mark, a date without its leading zero and a horizon with spaces (read
    # as the pandas reader read them).
    lenient = path.read_bytes().replace(b"2012-09-14,", b"2012-9-14,").replace(b",5,2012-09-17,", b", 5 ,2012-09-17,")
    assert lenient.count(b"2012-9-14,") == lenient.count(b", 5 ,") == 1
    (tmp_path / "lenient.csv").write_bytes(b"\xef\xbb\xbf" + lenient)
    pd.testing.assert_frame_equal(
        read_eval_csv(tmp_path / "lenient.csv").drop(columns="source_file"), whole.drop(columns="source_file")
    )
    without_text = pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns="raw_output")
    (tmp_path / "no_text.csv").write_text(without_text.to_csv(index=False))
    with pytest.raises(ValueError, match=r"no_text\.csv: missing column\(s\) raw_output"):
        read_eval_csv(tmp_path / "no_text.csv", raw_output=False)


@pytest.mark.parametrize("prefix", ["", "thesis-2012-10-26-", "thèse-"])
def test_a_repeated_id_is_found_wherever_the_ids_differ(tmp_path, source, prefix):
    """The id check compares whole ids, short or long (ids that share their first 8 or 16 bytes), ASCII or not."""
    frame = build_eval_frame(RECORDS, OUTPUTS, label_forward_returns(RECORDS, source), load_sft_config().target_format)
    frame = pd.concat([frame] * 400, ignore_index=True)
    frame["id"] = [f"{prefix}{i}" for i in range(len(frame))]
    write_eval_csv(frame, tmp_path / "distinct.csv")
    assert read_eval_csv(tmp_path / "distinct.csv")["id"].tolist() == frame["id"].tolist()
    frame.loc[1500, "id"] = f"{prefix}1234"
    write_eval_csv(frame, tmp_path / "repeated.csv")
    with pytest.raises(ValueError, match=rf"repeated\.csv: row 1501, column id: '{prefix}1234' appears on an earlier"):
        read_eval_csv(tmp_path / "repeated.csv")


def test_a_directory_reads_every_month_in_order(tmp_path, source):
    frame = build_eval_frame(RECORDS, OUTPUTS, label_forward_returns(RECORDS, source), load_sft_config().target_format)
    months = frame["as_of_date"].str[:7]
    for month in months.unique():
        write_eval_csv(frame[months == month], tmp_path / "eval" / f"{month}.csv")
    write_eval_csv(frame.iloc[:0], tmp_path / "eval" / "2012-12.csv")  # a month without theses: the header only
    back = read_eval_csv(tmp_path / "eval")
    assert back["id"].tolist() == frame["id"].tolist()
    assert back["source_file"].tolist() == [f"{m}.csv" for m in months]
    assert back.dtypes.to_dict() == read_eval_csv(tmp_path / "eval" / "2012-10.csv").dtypes.to_dict()
    with pytest.raises(FileNotFoundError, match="no \\*.csv eval files"):
        read_eval_csv(tmp_path / "prices")


def _save_splits(path, records: pd.DataFrame) -> None:
    test = datasets.Dataset.from_pandas(records, preserve_index=False)
    datasets.DatasetDict({"train": test.select([0]), "validation": test.select([0]), "test": test}).save_to_disk(
        str(path)
    )


def test_test_records_are_filtered_ordered_and_checked(tmp_path):
    _save_splits(tmp_path / "splits", RECORDS)
    records = load_test_records(tmp_path / "splits")
    assert records["id"].tolist() == [
        "ZZZ-2012-09-14-2",
        "AAPL-2012-10-26-1",
        "MSFT-2012-10-26-0",
        "AAPL-2012-11-21-3",
        "AAPL-2013-02-27-4",
    ]
    assert load_test_records(tmp_path / "splits", months=["2012-10"])["id"].tolist() == [
        "AAPL-2012-10-26-1",
        "MSFT-2012-10-26-0",
    ]
    assert len(load_test_records(tmp_path / "splits", max_samples=2)) == 2
    _save_splits(tmp_path / "thin", RECORDS.drop(columns=["instruction"]))
    with pytest.raises(ValueError, match=r"test split lacks column\(s\) instruction"):
        load_test_records(tmp_path / "thin")
    with pytest.raises(FileNotFoundError, match="not a saved DatasetDict"):
        load_test_records(tmp_path)


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft") / "model"
    corpus = [r["input"] + r["output"] for r in RECORDS.to_dict("records")] * 10
    make_toy_checkpoint(path, corpus, seed=0, vocab_size=400)
    return path


def test_sftc_evaluate_end_to_end(data_dir, toy_model, capsys):
    _save_splits(data_dir / "splits", RECORDS)
    results = data_dir / "out" / "eval.csv"
    code = sftc(
        [
            "evaluate",
            "--model",
            str(toy_model),
            "--dataset",
            str(data_dir / "splits"),
            "--results",
            str(results),
            "--max-new-tokens",
            "4",
            "--batch-size",
            "2",
            "--months",
            "2012-09,2012-10,2012-11",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    frame = read_eval_csv(results)
    assert frame["id"].tolist() == ["ZZZ-2012-09-14-2", "AAPL-2012-10-26-1", "MSFT-2012-10-26-0", "AAPL-2012-11-21-3"]
    assert frame["return_status"].tolist() == ["unknown_ticker", "ok", "ok", "ok"]
    assert frame["raw_output"].str.len().gt(0).all()
    assert '"rows": 4' in capsys.readouterr().out
    assert (data_dir / "prices" / "AAPL.parquet").is_file()  # the toy profile's local source filled from the sample


def test_sftc_evaluate_reports_a_missing_model(data_dir, capsys):
    _save_splits(data_dir / "splits", RECORDS)
    code = sftc(
        [
            "evaluate",
            "--model",
            str(data_dir / "nope"),
            "--dataset",
            str(data_dir / "splits"),
            "--results",
            str(data_dir / "e.csv"),
        ]
    )
    assert code == 2 and "not a Hugging Face checkpoint" in capsys.readouterr().err
    assert not (data_dir / "e.csv").exists()


def test_eval_csv_asset_writes_each_month_and_checks_the_parse_rate(data_dir, toy_model):
    import dagster as dg
    from stage_helpers import mark_as_written, stage_definitions

    from sftc_assets.evaluation import assets
    from sftc_assets.evaluation.assets import EvalRunConfig
    from sftc_platform.resources import GpuResource

    shutil.copytree(toy_model, data_dir / "models" / "sft")
    _save_splits(data_dir / "hf_splits", RECORDS)
    mark_as_written("sft_model", data_dir / "models" / "sft")
    mark_as_written("hf_splits", data_dir / "hf_splits")
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(  # two months in one run, as `sftc run` does
        stage_definitions(assets.defs),
        instance=instance,
        tags={"dagster/asset_partition_range_start": "2012-10", "dagster/asset_partition_range_end": "2012-11"},
        resources={"gpu": GpuResource(check_triton=False)},
        # transformers serve, the fallback, starts in seconds (test_eval_vllm.py serves with vLLM); 2 new tokens hold no
        # action, whether the untrained toy would end on EOS or not
        run_config=dg.RunConfig({"eval_csv": EvalRunConfig(max_new_tokens=2, server="transformers")}),
        raise_on_error=True,
    )
    assert result.success
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(re.match(r"eval_csv 2012-10: 2/2 rows \(100%\), [\d.]+ rows/s, in [\d.]+ s", m) for m in messages), (
        messages
    )  # progress in the run's log
    written = read_eval_csv(data_dir / "eval" / "2012-10.csv")
    assert written["id"].tolist() == ["AAPL-2012-10-26-1", "MSFT-2012-10-26-0"]
    # Each month's materialization, read back from the instance, describes that month only.
    for month, ids in {"2012-10": ["AAPL-2012-10-26-1", "MSFT-2012-10-26-0"], "2012-11": ["AAPL-2012-11-21-3"]}.items():
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("eval_csv"), asset_partitions=[month]), limit=5
        ).records
        metadata = record.asset_materialization.metadata
        assert (
            metadata["dagster/row_count"].value
            == metadata["rows"].value
            == len(ids)
            == len(read_eval_csv(data_dir / "eval" / f"{month}.csv"))
        )
        assert metadata["path"].value == str(data_dir / "eval" / f"{month}.csv") and metadata["device"].value == "cpu"
        preview = metadata["preview"].value
        assert (
            all(i in preview for i in ids)
            and "2012-09" not in preview
            and ("2012-11" in preview) == (month == "2012-11")
        )
        check_line = metadata["check eval_parse_rate"].value
        assert (
            check_line == "passed"
            if metadata["parse_rate"].value >= 0.5
            else check_line.startswith("FAILED: parse rate ")
        )
        assert metadata["parse_rate"].value == read_eval_csv(data_dir / "eval" / f"{month}.csv")["parse_ok"].mean()
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "eval_parse_rate"
    rates = {
        m: instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("eval_csv"), asset_partitions=[m]), limit=1
        )
        .records[0]
        .asset_materialization.metadata["parse_rate"]
        .value
        for m in ("2012-10", "2012-11")
    }
    assert check.passed == all(rate >= 0.5 for rate in rates.values())
    # No action fits in 2 tokens: the check names the budget that cut the answers, and where it is set.
    unparsed = sum(int((~read_eval_csv(data_dir / "eval" / f"{m}.csv")["parse_ok"]).sum()) for m in rates)
    assert (
        not check.passed
        and f"{unparsed} of {unparsed} unparsed outputs were cut at the generation budget before </action>"
        in check.description
    )
    assert "evaluation.max_new_tokens 2 in" in check.description and "profiles/toy.yaml" in check.description
    assert sorted(p.name for p in (data_dir / "eval").iterdir()) == [
        ".2012-10.csv.sftc.json",
        ".2012-11.csv.sftc.json",
        "2012-10.csv",
        "2012-11.csv",
    ]


def test_the_parse_rate_check_called_directly_says_whether_the_budget_cut_the_answers(data_dir, toy_model):
    from sftc_assets.evaluation import assets
    from sftc_core.settings import load_settings

    settings = load_settings()
    minimum = settings.eval_config.min_parse_rate
    ok, empty = {"rows": 2, "parse_rate": 1.0}, {"rows": 0, "parse_rate": None}
    result = assets.check_eval_parse_rate({"2012-10": ok, "2012-11": empty}, [], settings, max_new_tokens=8)
    assert result.passed and result.description is None and result.metadata["min_parse_rate"].value == minimum

    low = {"2012-10": ok, "2012-11": {"rows": 4, "parse_rate": minimum / 2}}
    unparsed = pd.DataFrame({"raw_output": ["<action>BUY</action>", "no idea", "x"], "parse_ok": [True, False, False]})
    result = assets.check_eval_parse_rate(low, [unparsed], settings, max_new_tokens=8)
    assert not result.passed and result.description.startswith(f"months below a parse rate of {minimum:.0%} ")
    assert f"2012-11 ({minimum / 2:.0%})" in result.description and "2012-10" not in result.description
    assert "served from elsewhere" in result.description  # no sft_model here to count the tokens with

    shutil.copytree(toy_model, data_dir / "models" / "sft")
    result = assets.check_eval_parse_rate(low, [unparsed], settings, max_new_tokens=40)
    assert "the outputs end on their own without an action" in result.description
    result = assets.check_eval_parse_rate(low, [unparsed], settings, max_new_tokens=2)
    assert "; 2 of 2 unparsed outputs were cut at the generation budget before </action>" in result.description
    assert "evaluation.max_new_tokens 2 in" in result.description and "profiles/toy.yaml" in result.description
