"""`sftc xml-to-jsonl`: outputs, the summary line, exit codes, nothing written on errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from theses_helpers import thesis, write

from sftc_core.io import read_jsonl
from sftc_jobs.cli import main
from sftc_jobs.commands.theses import default_rejects_path

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "data" / "samples"


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the CLI's log file goes under ./logs
    root = tmp_path / "xml"
    write(
        root,
        "2024/01/a.xml",
        "<theses>" + thesis() + thesis(ticker="MSFT", as_of_date="2024-01-16", action="??") + "</theses>",
    )
    write(root, "2024/01/b.xml", thesis())
    write(root, "2024/01/c.xml", "<thesis>")
    return root


def test_writes_records_and_rejects_and_prints_one_summary_line(corpus, tmp_path, capsys):
    out = tmp_path / "out" / "theses.jsonl"
    assert main(["xml-to-jsonl", "--input-dir", str(corpus), "--output", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [
        f"read 4 theses in 3 files: 1 accepted, 3 rejected (duplicate: 1, invalid_action: 1, malformed_xml: 1) -> {out}"
    ]
    assert [r["id"] for r in read_jsonl(out)] == ["AAPL-2024-01-15"]
    rejects = read_jsonl(tmp_path / "out" / "theses.rejects.jsonl")
    assert [(r["source_file"], r["index"], r["reason"]) for r in rejects] == [
        ("2024/01/a.xml", 1, "invalid_action"),
        ("2024/01/b.xml", 0, "duplicate"),
        ("2024/01/c.xml", None, "malformed_xml"),
    ]


def test_rejects_path_can_be_given(corpus, tmp_path):
    out, rejects = tmp_path / "o.jsonl", tmp_path / "elsewhere" / "bad.jsonl"
    assert main(["xml-to-jsonl", "--input-dir", str(corpus), "--output", str(out), "--rejects", str(rejects)]) == 0
    assert len(read_jsonl(rejects)) == 3
    assert not (tmp_path / "o.rejects.jsonl").exists()


def test_default_rejects_path():
    assert default_rejects_path(Path("d/out.jsonl")) == Path("d/out.rejects.jsonl")
    assert default_rejects_path(Path("d/out.json")) == Path("d/out.json.rejects.jsonl")


def test_all_rejected_still_exits_zero(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "x/bad.xml", "<nope/>")
    assert main(["xml-to-jsonl", "--input-dir", "x", "--output", "o.jsonl"]) == 0
    assert (tmp_path / "o.jsonl").read_text() == ""
    assert "0 accepted, 1 rejected (wrong_root: 1)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: (root.mkdir(), (root / "notes.txt").write_text("x")), "no .xml files"),
    ],
)
def test_missing_or_empty_input_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys, setup, message):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path / "in")
    assert main(["xml-to-jsonl", "--input-dir", "in", "--output", "out/o.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sftc xml-to-jsonl: error:") and message in err
    assert not (tmp_path / "out").exists()


def test_unwritable_output_exits_2_and_keeps_the_previous_files(corpus, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    out.write_text("previous\n")
    (tmp_path / "o.rejects.jsonl").mkdir()  # a directory where the rejects file should go
    # Not written by sftc: refused unless --force; forced, the write itself fails and keeps the previous file.
    assert main(["xml-to-jsonl", "--input-dir", str(corpus), "--output", str(out)]) == 2
    assert "is a file that sftc did not write" in capsys.readouterr().err
    assert main(["xml-to-jsonl", "--input-dir", str(corpus), "--output", str(out), "--force"]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("o.", ".o."))) == [
        "o.jsonl",
        "o.rejects.jsonl",
    ]


def test_same_path_for_output_and_rejects_is_refused(corpus, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    assert main(["xml-to-jsonl", "--input-dir", str(corpus), "--output", str(out), "--rejects", str(out)]) == 2
    assert "same file" in capsys.readouterr().err and not out.exists()


def test_usage_errors_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["xml-to-jsonl", "--input-dir", "x"])
    assert exit_info.value.code == 2


def test_a_rerun_replaces_the_outputs(corpus, tmp_path):
    out = tmp_path / "o.jsonl"
    main(["xml-to-jsonl", "--input-dir", str(corpus), "--output", str(out)])
    (corpus / "2024" / "01" / "a.xml").unlink()
    main(["xml-to-jsonl", "--input-dir", str(corpus), "--output", str(out)])
    assert [r["source_file"] for r in read_jsonl(out)] == ["2024/01/b.xml"]  # no longer a duplicate
    assert [r["reason"] for r in read_jsonl(tmp_path / "o.rejects.jsonl")] == ["malformed_xml"]


def test_the_installed_command_on_the_sample_corpus(tmp_path):
    """The real entry point, in a fresh process, on the committed sample."""
    out = tmp_path / "samples.jsonl"
    sftc = str(Path(sys.executable).with_name("sftc"))
    done = subprocess.run(
        [sftc, "xml-to-jsonl", "--input-dir", str(SAMPLES), "--output", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("read 44 theses in 23 files: 23 accepted, 21 rejected (")
    assert len(out.read_text().splitlines()) == 23
    rejects = [json.loads(line) for line in (tmp_path / "samples.rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 21
    assert "root:" not in out.read_text() + json.dumps(rejects)  # external-entity.xml points at /etc/passwd
