"""Outputs that cannot hurt: every writing command refuses an output that is, contains or lies inside one of its
inputs (symlinks resolved), never replaces what sftc did not write unless `--force`, replaces its own
outputs atomically, and writes files with the same modes."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
from safety_helpers import tree_digest

from sftc_core.artifacts import DIR_MARKER, file_marker, integrity_problems, is_ours
from sftc_jobs.cli import main


@pytest.fixture
def intact(cli_chain):
    """Asserts after the test that every artifact of the chain is byte for byte what it was."""
    before = {name: tree_digest(path) for name, path in cli_chain.items()}
    yield
    assert {name: tree_digest(path) for name, path in cli_chain.items()} == before


def _run(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, relation",
    [
        # the output is the parent of the source: the source and its neighbours would be replaced
        (lambda c: ["convert-fp8", "--source", c["fp8"], "--output", c["fp8"].parent], "contains the input"),
        (lambda c: ["convert-fp8", "--source", c["fp8"], "--output", c["fp8"] / "bf16"], "lies inside the input"),
        (lambda c: ["convert-fp8", "--source", c["fp8"], "--output", c["fp8"]], "is the input"),
        (
            lambda c: [
                "build-dataset",
                "--jsonl",
                c["records.jsonl"],
                "--out-dir",
                c["records.jsonl"],
                "--test-days",
                "90",
                "--validation-days",
                "60",
            ],
            "is the input",
        ),
        (
            lambda c: ["export-nemo", "--dataset-dir", c["splits"], "--output-dir", c["splits"], "--skip-tokenizer"],
            "is the input",
        ),
        (
            lambda c: [
                "export-nemo",
                "--dataset-dir",
                c["splits"],
                "--output-dir",
                c["splits"] / "train",
                "--skip-tokenizer",
            ],
            "lies inside the input",
        ),
        (lambda c: ["make-toy-checkpoint", "--out", c["nemo"], "--corpus", c["nemo"]], "is the input"),
        (
            lambda c: ["xml-to-jsonl", "--input-dir", c["xml"], "--output", next(c["xml"].rglob("*.xml"))],
            "lies inside the input",
        ),
        (
            lambda c: [
                "xml-to-jsonl",
                "--input-dir",
                c["xml"],
                "--output",
                c["xml"].parent / "r.jsonl",
                "--rejects",
                c["xml"] / "rejects.jsonl",
            ],
            "lies inside the input",
        ),
    ],
    ids=[
        "convert-parent",
        "convert-inside",
        "convert-same",
        "dataset-same",
        "nemo-same",
        "nemo-inside",
        "toy-same",
        "xml-over-thesis",
        "xml-rejects",
    ],
)
def test_an_output_over_an_input_is_refused_and_the_input_kept(cli_chain, intact, capsys, argv, relation):
    code, err = _run(argv(cli_chain), capsys)
    assert code == 2
    assert relation in err and "choose an output elsewhere" in err
    assert len(err.strip().splitlines()) == 1


def test_a_symlink_to_the_input_is_seen_through(cli_chain, intact, tmp_path, capsys):
    alias = tmp_path / "looks-new"
    alias.symlink_to(cli_chain["fp8"], target_is_directory=True)
    code, err = _run(["convert-fp8", "--source", cli_chain["fp8"], "--output", alias, "--no-progress"], capsys)
    assert code == 2 and "is the input" in err


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_what_sftc_did_not_write_is_kept_unless_forced(cli_chain, tmp_path, capsys, kind):
    out = tmp_path / "splits"
    if kind == "file":
        out.write_text("my notes\n")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("my notes\n")
    argv = [
        "build-dataset",
        "--jsonl",
        cli_chain["records.jsonl"],
        "--out-dir",
        out,
        "--validation-days",
        "60",
        "--test-days",
        "90",
    ]
    code, err = _run(argv, capsys)
    assert code == 2
    assert (
        f"--out-dir {out} is a {'file' if kind == 'file' else 'non-empty directory'} that sftc did not write" in err
        and "--force" in err
    )
    assert (out.read_text() if kind == "file" else (out / "notes.txt").read_text()) == "my notes\n"

    code, err = _run([*argv, "--force"], capsys)
    assert code == 0, err
    assert is_ours(out) and (out / "dataset_dict.json").is_file() and not (out / "notes.txt").exists()
    assert integrity_problems(out) == []


def test_an_empty_directory_and_sftc_s_own_output_are_replaced_without_force(cli_chain, tmp_path, capsys):
    out = tmp_path / "nemo"
    out.mkdir()
    argv = ["export-nemo", "--dataset-dir", cli_chain["splits"], "--output-dir", out, "--skip-tokenizer"]
    assert _run(argv, capsys)[0] == 0
    marker = json.loads((out / DIR_MARKER).read_text())
    assert marker["writer"] == "sftc export-nemo" and set(marker["files"]) >= {
        "training.jsonl",
        "validation.jsonl",
        "test.jsonl",
    }
    first = tree_digest(out)
    code, err = _run([*argv, "--max-samples", "3"], capsys)
    assert code == 0, err
    assert len((out / "training.jsonl").read_text().splitlines()) == 3 and tree_digest(out) != first
    assert not [p for p in tmp_path.iterdir() if p.name != "nemo"]  # built beside, swapped: nothing left over


def test_train_does_not_take_a_copy_of_a_report_for_its_run(cli_chain, tmp_path, capsys):
    """A directory holding a metrics.json (here a copied backtest report) is not a training run of ours."""
    copied = tmp_path / "backtest-copy"
    copied.mkdir()
    (copied / "metrics.json").write_text(json.dumps({"sharpe": 1.0}))
    (copied / "report.md").write_text("# Backtest\n")
    before = tree_digest(copied)
    code, err = _run(
        ["train", "--model", cli_chain["bf16"], "--data", cli_chain["nemo"], "--output", copied, "--max-steps", "1"],
        capsys,
    )
    assert code == 2 and "is a non-empty directory that sftc did not write" in err
    assert tree_digest(copied) == before


def test_a_file_output_gets_a_sidecar_marker_and_is_refused_once_edited(cli_chain, tmp_path, capsys):
    out = tmp_path / "records.jsonl"
    argv = ["xml-to-jsonl", "--input-dir", cli_chain["xml"], "--output", out]
    assert _run(argv, capsys)[0] == 0
    assert file_marker(out).is_file() and integrity_problems(out) == []
    with open(out, "a") as fh:
        fh.write("{}\n")  # edited by hand: still ours to replace, but no longer what sftc wrote
    assert integrity_problems(out) == [f"{out} was changed after sftc wrote it"]
    assert _run(argv, capsys)[0] == 0 and integrity_problems(out) == []


def test_every_file_written_has_the_usual_mode(cli_chain):
    """Shards and model.safetensors come out like every other file (0666 less the umask), not 0600."""
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    modes = {
        p: stat.S_IMODE(p.stat().st_mode)
        for name in ("fp8", "bf16", "nemo", "splits")
        for p in cli_chain[name].rglob("*")
        if p.is_file()
    }
    assert any(p.suffix == ".safetensors" for p in modes)
    assert {p: m for p, m in modes.items() if m != expected} == {}


def test_a_copied_artifact_stays_recognised_and_whole(cli_chain, tmp_path):
    """shutil.copytree keeps mtimes: the copy passes the cheap check without being hashed again."""
    copy = tmp_path / "bf16"
    shutil.copytree(cli_chain["bf16"], copy)
    assert integrity_problems(copy) == []
    (copy / "config.json").unlink()
    assert integrity_problems(copy) == [f"{copy / 'config.json'} is missing"]
