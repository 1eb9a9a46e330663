"""Inputs read whole or refused: only regular files inside the input tree are read; an unreadable directory or
file, a FIFO named *.xml and a symlink out of the tree stop the parse with the path named (never silence,
never a hang); an asset refuses inputs that are missing or changed since sftc wrote them."""

from __future__ import annotations

import os

import dagster as dg
import pytest
from safety_helpers import sftc_process
from stage_helpers import stage_definitions
from test_datasets_assets import write_monthly_jsonl
from theses_helpers import thesis, write

from sftc_assets.sft_data import assets as sft_data_assets
from sftc_assets.theses.layout import CorpusError, thesis_files
from sftc_core.io import read_jsonl
from sftc_core.paths import ArtifactPaths


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "xml"
    write(root, "2024/01/a.xml", thesis())
    write(root, "2024/02/b.xml", thesis(ticker="MSFT", as_of_date="2024-02-15"))
    return root


def _xml_to_jsonl(corpus, tmp_path, timeout: float = 300):
    return sftc_process(
        ["xml-to-jsonl", "--input-dir", corpus, "--output", tmp_path / "out.jsonl"], cwd=tmp_path, timeout=timeout
    )


@pytest.mark.parametrize("what", ["directory", "file"])
def test_an_unreadable_part_of_the_corpus_stops_the_parse_and_is_named(corpus, tmp_path, what):
    locked = corpus / "2024" / "02" if what == "directory" else corpus / "2024" / "02" / "b.xml"
    locked.chmod(0)
    try:
        done = _xml_to_jsonl(corpus, tmp_path)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 2, done.stderr
    error = done.stderr.strip().splitlines()
    assert len(error) == 1 and str(locked) in error[0] and "Permission denied" in error[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-counted was written


def test_a_fifo_named_xml_is_refused_not_waited_on(corpus, tmp_path):
    fifo = corpus / "2024" / "01" / "pipe.xml"
    os.mkfifo(fifo)
    done = _xml_to_jsonl(corpus, tmp_path, timeout=120)  # a parse that opened it would block here until the timeout
    assert done.returncode == 2
    assert f"{fifo}: not a regular file" in done.stderr and "remove it from the input tree" in done.stderr


def test_symlinks_out_of_the_tree_are_refused_and_inside_ones_read_once(corpus, tmp_path):
    outside = tmp_path / "elsewhere"
    write(outside, "c.xml", thesis(ticker="IBM", as_of_date="2024-01-20"))
    inner = corpus / "2024" / "01" / "alias"
    inner.symlink_to(corpus / "2024" / "02", target_is_directory=True)
    assert thesis_files(corpus) == ["2024/01/a.xml", "2024/02/b.xml"]  # the inner link is not walked twice

    for link, target in ((corpus / "2024" / "01" / "c.xml", outside / "c.xml"), (corpus / "2024" / "03", outside)):
        link.symlink_to(target, target_is_directory=target.is_dir())
        with pytest.raises(CorpusError, match="a symlink leading out of the input tree"):
            thesis_files(corpus)
        done = _xml_to_jsonl(corpus, tmp_path)
        assert done.returncode == 2 and f"{link}: a symlink leading out of the input tree" in done.stderr
        link.unlink()
    assert _xml_to_jsonl(corpus, tmp_path).returncode == 0
    assert [r["ticker"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["AAPL", "MSFT"]


def _hf_splits(instance):
    return dg.materialize(
        stage_definitions(sft_data_assets.defs), instance=instance, selection=["hf_splits"], raise_on_error=False
    )


def test_an_asset_refuses_inputs_changed_or_lost_since_sftc_wrote_them(data_dir):
    write_monthly_jsonl(data_dir)
    paths = ArtifactPaths(data_dir)
    instance = dg.DagsterInstance.ephemeral()
    edited = paths.jsonl_month("2011-06")
    copied = paths.jsonl_month("2011-05").read_text(encoding="utf-8").splitlines(keepends=True)[0]
    with open(edited, "a", encoding="utf-8") as fh:
        fh.write(copied)  # a record copied in by hand
    refused = _hf_splits(instance)
    failure = refused.failure_data_for_node("hf_splits").user_failure_data.description
    assert f"{edited} was changed after sftc wrote it (re-materialize thesis_jsonl 2011-06)" in failure
    assert not paths.hf_splits.exists()  # nothing was done

    lost = paths.jsonl_month("2011-06")
    lost.unlink()
    failure = _hf_splits(instance).failure_data_for_node("hf_splits").user_failure_data.description
    assert f"{lost} is missing (re-materialize thesis_jsonl 2011-06)" in failure
