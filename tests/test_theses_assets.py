"""`raw_xml` and `thesis_jsonl` materialized through a real Dagster instance, month by month and as a range."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from stage_helpers import settings_with, stage_definitions
from theses_helpers import thesis, write

from sftc_assets.theses import assets, parser
from sftc_assets.theses.assets import COUNTS_CHECK, SCHEMA_CHECK
from sftc_core.io import atomic_write_jsonl, read_jsonl
from sftc_core.paths import ArtifactPaths


@pytest.fixture
def external_corpus(data_dir: Path, monkeypatch) -> ArtifactPaths:
    """The full profile's raw_xml: files already on disk, observed. January's AAPL comes again in a February file."""
    monkeypatch.setenv("SFTC_PROFILE", "full")
    paths = ArtifactPaths(data_dir)
    write(
        paths.raw_xml,
        "2012/01/a.xml",
        "<theses>"
        + thesis(ticker="AAPL", as_of_date="2012-01-10")
        + thesis(ticker="MSFT", as_of_date="2012-01-11")
        + "</theses>",
    )
    write(
        paths.raw_xml,
        "2012/02/b.xml",
        "<theses>"
        + thesis(ticker="IBM", as_of_date="2012-02-02")
        + thesis(ticker="GOOG", as_of_date="2012-02-30")
        + "</theses>",
    )
    write(
        paths.raw_xml, "2012/02/late/c.xml", thesis(ticker="aapl", as_of_date="2012-01-10", action="sell")
    )  # dated January: a January duplicate
    write(paths.raw_xml, "2012/02/d.xml", "<broken>")
    write(paths.raw_xml, "misc/e.xml", thesis(ticker="XOM", as_of_date="2030-01-02"))  # outside every partition
    return paths


def theses_stage() -> list:
    """The stage over 2011..2012 in either profile (the full profile's own months start in 2015)."""
    return stage_definitions(assets.defs, settings_with(partitions={"start": "2011-01", "end": "2012-12"}))


def materialize(data_dir: Path, instance: dg.DagsterInstance, **kwargs) -> dg.ExecuteInJobResult:
    result = dg.materialize(theses_stage(), instance=instance, **kwargs)
    assert result.success
    return result


def metadata_of(result, asset: str) -> dict[str | None, dict]:
    events = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    return {
        m.partition: {k: v.value for k, v in m.metadata.items()} for m in events if m.asset_key == dg.AssetKey(asset)
    }


def test_two_monthly_partitions_one_after_the_other(data_dir, external_corpus):
    paths, instance = external_corpus, dg.DagsterInstance.ephemeral()

    february = materialize(data_dir, instance, partition_key="2012-02")
    assert [r["id"] for r in read_jsonl(paths.jsonl_month("2012-02"))] == ["IBM-2012-02-02"]
    assert [(r["source_file"], r["reason"]) for r in read_jsonl(paths.rejects_month("2012-02"))] == [
        ("2012/02/b.xml", "invalid_date"),  # no real date: the month of its directory
        ("2012/02/d.xml", "malformed_xml"),
    ]
    assert not paths.jsonl_month("2012-01").exists()  # only the requested month is written
    raw_meta, jsonl_meta = metadata_of(february, "raw_xml")["2012-02"], metadata_of(february, "thesis_jsonl")["2012-02"]
    assert (raw_meta["source"], raw_meta["files"]) == ("external", 3)
    assert raw_meta["bytes"] == sum(p.stat().st_size for p in paths.raw_xml_month("2012-02").rglob("*.xml"))
    assert {k: jsonl_meta[k] for k in ("read", "accepted", "rejected", "corpus_read", "not_in_any_partition")} == {
        "read": 3,
        "accepted": 1,
        "rejected": 2,
        "corpus_read": 7,
        "not_in_any_partition": 1,
    }
    assert "invalid_date" in jsonl_meta["reject_reasons"] and "IBM-2012-02-02" in jsonl_meta["preview"]
    assert {e.check_name: e.passed for e in february.get_asset_check_evaluations()} == {
        COUNTS_CHECK: True,
        SCHEMA_CHECK: True,
    }
    february_bytes = paths.jsonl_month("2012-02").read_bytes(), paths.rejects_month("2012-02").read_bytes()

    january = materialize(data_dir, instance, partition_key="2012-01")
    assert [r["id"] for r in read_jsonl(paths.jsonl_month("2012-01"))] == ["AAPL-2012-01-10", "MSFT-2012-01-11"]
    [duplicate] = read_jsonl(paths.rejects_month("2012-01"))  # found though its file lives in February's directory
    assert (duplicate["source_file"], duplicate["reason"], duplicate["duplicate_of"]) == (
        "2012/02/late/c.xml",
        "duplicate",
        "AAPL-2012-01-10",
    )
    assert metadata_of(january, "thesis_jsonl")["2012-01"]["date_range"] == "2012-01-10..2012-01-11"
    assert (paths.jsonl_month("2012-02").read_bytes(), paths.rejects_month("2012-02").read_bytes()) == february_bytes
    assert instance.get_materialized_partitions(dg.AssetKey("thesis_jsonl")) == {"2012-01", "2012-02"}


def test_a_range_of_months_in_one_run_matches_month_by_month(data_dir, external_corpus):
    paths, instance = external_corpus, dg.DagsterInstance.ephemeral()
    ranged = materialize(
        data_dir,
        instance,
        tags={"dagster/asset_partition_range_start": "2012-01", "dagster/asset_partition_range_end": "2012-03"},
    )
    assert set(metadata_of(ranged, "thesis_jsonl")) == {"2012-01", "2012-02", "2012-03"}

    # Each month's materialization, read back from the instance, carries that month's own figures.
    def stored(asset: str, month: str) -> dict:
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[month]), limit=5
        ).records
        return {k: v.value for k, v in record.asset_materialization.metadata.items()}

    january, february = stored("thesis_jsonl", "2012-01"), stored("thesis_jsonl", "2012-02")
    assert (january["dagster/row_count"], january["read"], january["rejected"]) == (2, 3, 1)
    assert (february["dagster/row_count"], february["read"], february["rejected"]) == (1, 3, 2)
    assert "MSFT-2012-01-11" in january["preview"] and "IBM-2012-02-02" not in january["preview"]
    assert january["path"] == str(paths.jsonl_month("2012-01")) and january[f"check {COUNTS_CHECK}"] == "passed"
    assert stored("thesis_jsonl", "2012-03")["dagster/row_count"] == 0
    assert [stored("raw_xml", m)["files"] for m in ("2012-01", "2012-02", "2012-03")] == [1, 3, 0]
    assert len(ranged.get_asset_materialization_events()) == 6  # one run: three months of both assets
    assert read_jsonl(paths.jsonl_month("2012-03")) == [] and read_jsonl(paths.rejects_month("2012-03")) == []

    def data_files() -> dict:  # the records and rejects (their markers and locks record when, not what)
        return {p.name: p.read_bytes() for p in paths.jsonl.iterdir() if not p.name.startswith(".")}

    ranged_files = data_files()
    for month in ("2012-01", "2012-02", "2012-03"):
        materialize(data_dir, instance, partition_key=month)
    assert data_files() == ranged_files


def test_the_counts_check_fails_when_a_written_line_is_lost(data_dir, external_corpus, monkeypatch):
    """The checks read the files back: a writer that drops a line must fail the counts check."""
    real_write = parser.write_jsonl_outputs

    def lossy_write(result, output, rejects, stamp=None):
        counts = real_write(result, output, rejects, stamp)
        Path(output).write_text("".join(Path(output).read_text().splitlines(keepends=True)[1:]))
        return counts

    monkeypatch.setattr(parser, "write_jsonl_outputs", lossy_write)
    result = dg.materialize(
        theses_stage(), instance=dg.DagsterInstance.ephemeral(), partition_key="2012-01", raise_on_error=False
    )
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {
        COUNTS_CHECK: False,
        SCHEMA_CHECK: True,
    }


def test_toy_profile_generates_and_parses_a_sample_month(data_dir):
    """The toy chain's first two assets for real: sample theses from the packaged prices, then parsed."""
    paths = ArtifactPaths(data_dir)
    result = materialize(data_dir, dg.DagsterInstance.ephemeral(), partition_key="2011-06")
    raw_meta = metadata_of(result, "raw_xml")["2011-06"]
    assert raw_meta["source"] == "sample" and raw_meta["files"] > 0
    records = read_jsonl(paths.jsonl_month("2011-06"))
    assert len(records) == raw_meta["theses_written"] and read_jsonl(paths.rejects_month("2011-06")) == []
    assert {r["as_of_date"][:7] for r in records} == {"2011-06"}


def test_the_checks_of_thesis_jsonl_called_directly_read_the_files_back(tmp_path):
    paths = ArtifactPaths(tmp_path)
    theses = thesis(ticker="AAPL", as_of_date="2012-01-10") + thesis(ticker="MSFT", as_of_date="2012-01-11")
    write(paths.raw_xml, "2012/01/a.xml", f"<theses>{theses}</theses>")
    january = parser.parse_corpus(paths.raw_xml).by_month()["2012-01"]
    parser.write_jsonl_outputs(january, paths.jsonl_month("2012-01"), paths.rejects_month("2012-01"))
    checks, by_month = assets.check_thesis_jsonl({"2012-01": 2}, paths)
    assert [(c.check_name, c.passed) for c in checks] == [(COUNTS_CHECK, True), (SCHEMA_CHECK, True)]
    assert by_month == {"2012-01": {f"check {COUNTS_CHECK}": "passed", f"check {SCHEMA_CHECK}": "passed"}}

    # one thesis more read than lines written, and a record that lost its ticker
    records = read_jsonl(paths.jsonl_month("2012-01"))
    del records[1]["ticker"]
    atomic_write_jsonl(paths.jsonl_month("2012-01"), records)
    checks, by_month = assets.check_thesis_jsonl({"2012-01": 3}, paths)
    assert [(c.check_name, c.passed) for c in checks] == [(COUNTS_CHECK, False), (SCHEMA_CHECK, False)]
    assert by_month["2012-01"][f"check {COUNTS_CHECK}"] == "FAILED: 2 + 0 lines for 3 read"
    problems = checks[1].metadata["problems"].value
    assert problems > 0
    assert by_month["2012-01"][f"check {SCHEMA_CHECK}"].startswith(f"FAILED: {problems} problems, e.g. record line 2")
    assert "2012-01: record line 2" in checks[1].metadata["first_problems"].value
