"""Every failure of a command ends in one line naming the file, the problem and the fix, exit 2; the traceback
goes to the log file only. Each case runs `sftc` as a fresh process without root's file privileges, on copies
of artifacts the command-line chain wrote."""

from __future__ import annotations

import os
import shutil

import pytest
from backtest_helpers import hand_rows, write_hand_csv
from safety_helpers import sftc_process


def _copy(cli_chain, name, tmp_path):
    copy = tmp_path / name
    (shutil.copytree if cli_chain[name].is_dir() else shutil.copy2)(cli_chain[name], copy)
    return copy


def _fails_in_one_line(done, *expected: str) -> str:
    """The command exited 2 with its error as the last line of stderr, naming what is expected; no traceback
    on the terminal, the traceback in the log file the line points to."""
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]
    for text in expected:
        assert text in error, error
    log_file = error.rsplit("(details: ", 1)[1].rstrip(")")
    return error, log_file


def _log_text(cwd, log_file) -> str:
    return (cwd / log_file).read_text(encoding="utf-8")


def test_an_unreadable_shard(cli_chain, tmp_path):
    source = _copy(cli_chain, "fp8", tmp_path)
    shard = source / "model-00002-of-00004.safetensors"
    shard.chmod(0)
    done = sftc_process(
        ["convert-fp8", "--source", source, "--output", tmp_path / "bf16", "--no-progress"], cwd=tmp_path
    )
    _, log_file = _fails_in_one_line(done, f"{shard}: Permission denied", "give this user access to it")
    assert "Traceback" in _log_text(tmp_path, log_file) and "PermissionError" in _log_text(tmp_path, log_file)
    assert not (tmp_path / "bf16").exists()


def test_an_unreadable_jsonl(cli_chain, tmp_path):
    records = _copy(cli_chain, "records.jsonl", tmp_path)
    records.chmod(0)
    done = sftc_process(
        [
            "build-dataset",
            "--jsonl",
            records,
            "--out-dir",
            tmp_path / "splits",
            "--test-days",
            "90",
            "--validation-days",
            "60",
        ],
        cwd=tmp_path,
    )
    _fails_in_one_line(done, f"{records}: Permission denied")


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            lambda s: (s / "train" / "data-00000-of-00001.arrow").chmod(0),
            ("train/data-00000-of-00001.arrow: Permission denied", "give this user read access"),
        ),
        (
            lambda s: (s / "dataset_dict.json").write_text('{"splits": ['),
            ("dataset_dict.json: not valid JSON", "sftc build-dataset"),
        ),
        (
            lambda s: os.truncate(s / "test" / "data-00000-of-00001.arrow", 100),
            ("test/data-00000-of-00001.arrow: truncated", "sftc build-dataset"),
        ),
    ],
    ids=["unreadable-arrow", "corrupt-dataset-dict", "truncated-arrow"],
)
def test_a_damaged_dataset_names_the_file(cli_chain, tmp_path, damage, expected):
    splits = _copy(cli_chain, "splits", tmp_path)
    damage(splits)
    done = sftc_process(
        ["export-nemo", "--dataset-dir", splits, "--output-dir", tmp_path / "nemo", "--skip-tokenizer"], cwd=tmp_path
    )
    _fails_in_one_line(done, f"the saved DatasetDict {splits} cannot be read", *expected)


def test_an_unreadable_eval_csv_and_a_broken_price_file(cli_chain, tmp_path, monkeypatch):
    data = tmp_path / "data"
    eval_csv = tmp_path / "eval.csv"
    write_hand_csv(eval_csv, hand_rows())
    argv = ["backtest", "--eval-csv", eval_csv, "--report", tmp_path / "report"]
    prices = data / "prices"
    prices.mkdir(parents=True)
    (prices / "AAPL.parquet").write_bytes(b"not parquet")
    monkeypatch.setenv("SFTC_DATA_DIR", str(data))  # the toy profile's local prices live under it
    done = sftc_process(argv, cwd=tmp_path)
    _fails_in_one_line(
        done, f"{prices / 'AAPL.parquet'}: cannot read the price file", "rewrite it with columns date, open"
    )
    (prices / "AAPL.parquet").unlink()
    eval_csv.chmod(0)
    _fails_in_one_line(sftc_process(argv, cwd=tmp_path), f"{eval_csv}: Permission denied")
    assert not (tmp_path / "report").exists()


def test_a_bogus_device(cli_chain, tmp_path):
    done = sftc_process(
        [
            "train",
            "--model",
            cli_chain["bf16"],
            "--data",
            cli_chain["nemo"],
            "--output",
            tmp_path / "sft",
            "--device",
            "bogus",
        ],
        cwd=tmp_path,
    )
    _fails_in_one_line(done, "--device 'bogus': expected auto, cpu, cuda or cuda:N")
    assert not (tmp_path / "sft").exists()


def test_an_output_where_a_file_is(cli_chain, tmp_path):
    taken = tmp_path / "bf16"
    taken.write_text("a file of mine\n")
    done = sftc_process(["convert-fp8", "--source", cli_chain["fp8"], "--output", taken, "--no-progress"], cwd=tmp_path)
    _fails_in_one_line(done, f"--output {taken} is a file that sftc did not write", "--force")
    assert taken.read_text() == "a file of mine\n"
