"""The thesis XML parser against docs/thesis-xml.md: shapes, fields, rejects, duplicates, security,
encodings, size limit, determinism, monthly grouping, and the committed sample corpus."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import math
import os
import random
import re
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from theses_helpers import thesis, write

from sftc_assets.theses import parser as theses_parser
from sftc_assets.theses.parser import (
    CorpusError,
    ParseResult,
    parse_corpus,
    summary_line,
    write_jsonl_outputs,
)
from sftc_assets.theses.schema import (
    REJECT_REASONS,
    month_problems,
    record_problems,
    reject_problems,
)
from sftc_core.io import read_jsonl

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "data" / "samples"


def parse_one(tmp_path: Path, xml: str | bytes, rel: str = "2024/01/t.xml") -> ParseResult:
    write(tmp_path, rel, xml)
    return parse_corpus(tmp_path)


def only_reject(result: ParseResult) -> dict:
    assert not result.records, result.records
    assert len(result.rejects) == 1, result.rejects
    return result.rejects[0]


# --- the committed sample corpus -----------------------------------------------------------


def _readme_rejects() -> set[tuple]:
    rows = set()
    for line in (SAMPLES / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| 20") and len(cells) == 5:
            source, index, field, reason, _ = cells
            rows.add((source, int(index) if index else None, field or None, reason))
    return rows


def test_sample_corpus_gives_exactly_the_rejects_listed_in_its_readme():
    result = parse_corpus(SAMPLES)
    expected = _readme_rejects()
    assert len(expected) == 21
    assert {(r["source_file"], r["index"], r["field"], r["reason"]) for r in result.rejects} == expected
    summary = re.search(
        r"read (\d+) theses in (\d+) files: (\d+) accepted, (\d+) rejected", (SAMPLES / "README.md").read_text()
    )
    counts = result.counts()
    assert (counts["read"], counts["files"], counts["accepted"], counts["rejected"]) == tuple(
        map(int, summary.groups())
    )
    assert counts["unknown_elements"] == {"thesis/analyst": 1}
    assert all(not record_problems(r) for r in result.records)
    assert all(not reject_problems(r) for r in result.rejects)


def test_sample_corpus_normalises_the_hand_checked_records():
    records = {r["id"]: r for r in parse_corpus(SAMPLES).records}
    assert records["MSFT-2012-01-10"]["action"] == "STRONG_BUY"  # "Strong Buy"
    assert records["MSFT-2012-01-10"]["support"] == ["Volume 15% above the 3-month average"]
    assert records["MSFT-2012-01-10"]["horizon_days"] == 5 and records["MSFT-2012-01-10"]["confidence"] is None
    assert records["BRK.B-2012-01-17"]["action"] == "STRONG_SELL"
    assert "café" in records["XOM-2012-01-24"]["reasoning"]  # declared ISO-8859-1
    assert "€" in records["jpm-2012-02-21"]["reasoning"]  # UTF-8 with a BOM
    assert records["ibm-2012-01-11"]["reasoning"].startswith(
        "Price sits 2% below the 52-week high & trend is flat: <no edge>"
    )
    assert "<!--" not in records["GOOG-2012-01-12"]["reasoning"]
    assert records["nvda-2012-01-31"]["ticker"] == "NVDA" and records["nvda-2012-01-31"]["confidence"] == 0.8
    assert records["XOM-2012-02-14"]["source_file"] == "2012/02/desk-a/energy/xom-2012-02-14.xml"
    assert records["aapl-2012-02-06"]["source_file"] == "2012/02/week-06.xml"  # the earlier of the two duplicates


# --- fields and normalisation --------------------------------------------------------------


def test_a_full_thesis_becomes_the_spec_record(tmp_path):
    xml = """<?xml version="1.0" encoding="UTF-8"?>
<theses>
  <thesis id="aapl-2024-01-15">
    <confidence> 0.7 </confidence>
    <support>
      <point>Gross margin 45.9%, up 120 bp</point>
      <point><![CDATA[Buyback <pace> unchanged]]></point>
    </support>
    <ticker>
       aapl
    </ticker>
    <as_of_date>2024-01-15</as_of_date>
    <reasoning>Services <!-- a comment --> revenue<?pi ignored?> keeps compounding</reasoning>
    <action>Buy</action>
    <horizon_days>10</horizon_days>
  </thesis>
</theses>"""
    result = parse_one(tmp_path, xml, rel="2024/01/aapl.xml")
    assert result.rejects == []
    assert result.records == [
        {
            "id": "aapl-2024-01-15",
            "ticker": "AAPL",
            "as_of_date": "2024-01-15",
            "reasoning": "Services  revenue keeps compounding",
            "support": ["Gross margin 45.9%, up 120 bp", "Buyback <pace> unchanged"],
            "action": "BUY",
            "horizon_days": 10,
            "confidence": 0.7,
            "source_file": "2024/01/aapl.xml",
        }
    ]


def test_defaults_for_optional_fields_and_the_default_id(tmp_path):
    [record] = parse_one(tmp_path, thesis(ticker="brk.b")).records
    assert record["id"] == "BRK.B-2024-01-15"
    assert (record["support"], record["horizon_days"], record["confidence"]) == ([], 5, None)
    assert list(record) == [
        "id",
        "ticker",
        "as_of_date",
        "reasoning",
        "support",
        "action",
        "horizon_days",
        "confidence",
        "source_file",
    ]


@pytest.mark.parametrize(
    "written, canonical",
    [
        ("Strong Buy", "STRONG_BUY"),
        ("strong-buy", "STRONG_BUY"),
        ("  strong   buy ", "STRONG_BUY"),
        ("Strong-Sell", "STRONG_SELL"),
        ("hold", "HOLD"),
        ("SELL", "SELL"),
        ("strong_sell", "STRONG_SELL"),
    ],
)
def test_action_spellings(tmp_path, written, canonical):
    assert parse_one(tmp_path, thesis(action=written)).records[0]["action"] == canonical


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"support": "A single sentence of support."}, {"support": ["A single sentence of support."]}),
        ({"support": ""}, {"support": []}),
        ({"support": "  <!-- nothing yet -->  "}, {"support": []}),
        ({"support": "<point>a</point> <!-- c --> <point> b </point>"}, {"support": ["a", "b"]}),
        ({"horizon_days": "260"}, {"horizon_days": 260}),
        ({"horizon_days": "001"}, {"horizon_days": 1}),
        ({"horizon_days": ""}, {"horizon_days": 5}),
        ({"confidence": "0"}, {"confidence": 0.0}),
        ({"confidence": "1"}, {"confidence": 1.0}),
        ({"confidence": ".25"}, {"confidence": 0.25}),
        ({"confidence": "5e-1"}, {"confidence": 0.5}),
        ({"confidence": ""}, {"confidence": None}),
        ({"ticker": "aapl.us"}, {"ticker": "AAPL.US", "id": "AAPL.US-2024-01-15"}),
        ({"ticker": "X"}, {"ticker": "X"}),
        ({"ticker": "ABCDEFGHIJKLMNO"}, {"ticker": "ABCDEFGHIJKLMNO"}),
        ({"as_of_date": " 2024-02-29 "}, {"as_of_date": "2024-02-29"}),
        ({"reasoning": "x" * 20_000}, {"reasoning": "x" * 20_000}),
        ({"reasoning": "<![CDATA[a < b & c]]>"}, {"reasoning": "a < b & c"}),
        ({"reasoning": "caf&#233; &amp; cr&#xe8;me"}, {"reasoning": "café & crème"}),
    ],
)
def test_accepted_field_values(tmp_path, fields, expected):
    [record] = parse_one(tmp_path, thesis(**fields)).records
    assert {k: record[k] for k in expected} == expected


def test_negative_zero_confidence_is_written_as_zero(tmp_path):
    [record] = parse_one(tmp_path, thesis(confidence="-0")).records
    assert record["confidence"] == 0 and math.copysign(1, record["confidence"]) == 1


@pytest.mark.parametrize(
    "fields, field, reason",
    [
        ({"ticker": "AAPL!"}, "ticker", "invalid_ticker"),
        ({"ticker": "AA PL"}, "ticker", "invalid_ticker"),
        ({"ticker": "-AAPL"}, "ticker", "invalid_ticker"),
        ({"ticker": "ABCDEFGHIJKLMNOP"}, "ticker", "invalid_ticker"),
        ({"ticker": "ÄPFEL"}, "ticker", "invalid_ticker"),
        ({"ticker": "ſap"}, "ticker", "invalid_ticker"),  # upper-cases to SAP in Unicode
        ({"as_of_date": "2024-02-30"}, "as_of_date", "invalid_date"),
        ({"as_of_date": "2023-02-29"}, "as_of_date", "invalid_date"),
        ({"as_of_date": "2024-1-5"}, "as_of_date", "invalid_date"),
        ({"as_of_date": "20240115"}, "as_of_date", "invalid_date"),
        ({"as_of_date": "2024-01-15T00:00"}, "as_of_date", "invalid_date"),
        ({"as_of_date": "٢٠٢٤-٠١-١٥"}, "as_of_date", "invalid_date"),
        ({"as_of_date": "0000-01-01"}, "as_of_date", "invalid_date"),
        ({"reasoning": "x" * 20_001}, "reasoning", "too_long"),
        ({"action": "ACCUMULATE"}, "action", "invalid_action"),
        ({"action": "buy now"}, "action", "invalid_action"),
        ({"action": "ſell"}, "action", "invalid_action"),
        ({"horizon_days": "5.0"}, "horizon_days", "invalid_horizon"),
        ({"horizon_days": "0"}, "horizon_days", "invalid_horizon"),
        ({"horizon_days": "261"}, "horizon_days", "invalid_horizon"),
        ({"horizon_days": "-5"}, "horizon_days", "invalid_horizon"),
        ({"horizon_days": "five"}, "horizon_days", "invalid_horizon"),
        ({"horizon_days": "1_0"}, "horizon_days", "invalid_horizon"),
        ({"horizon_days": "٥"}, "horizon_days", "invalid_horizon"),
        ({"confidence": "NaN"}, "confidence", "invalid_confidence"),
        ({"confidence": "nan"}, "confidence", "invalid_confidence"),
        ({"confidence": "inf"}, "confidence", "invalid_confidence"),
        ({"confidence": "-Infinity"}, "confidence", "invalid_confidence"),
        ({"confidence": "1.5"}, "confidence", "invalid_confidence"),
        ({"confidence": "-0.1"}, "confidence", "invalid_confidence"),
        ({"confidence": "70%"}, "confidence", "invalid_confidence"),
        ({"confidence": "0_5"}, "confidence", "invalid_confidence"),
        ({"ticker": None}, "ticker", "missing_field"),
        ({"as_of_date": None}, "as_of_date", "missing_field"),
        ({"reasoning": None}, "reasoning", "missing_field"),
        ({"action": None}, "action", "missing_field"),
        ({"reasoning": "   "}, "reasoning", "empty_field"),
        ({"action": "<!-- todo -->"}, "action", "empty_field"),
        ({"reasoning": "Markup <b>inside</b>"}, "reasoning", "unexpected_element"),
        ({"support": "text <point>and a point</point>"}, "support", "invalid_support"),
        ({"support": "<point>a</point><point>  </point>"}, "support", "invalid_support"),
        ({"support": "<point>a</point><item>b</item>"}, "support", "invalid_support"),
        ({"support": "<point>a <b>b</b></point>"}, "support", "invalid_support"),
    ],
)
def test_field_rejects(tmp_path, fields, field, reason):
    reject = only_reject(parse_one(tmp_path, thesis(**fields)))
    assert (reject["source_file"], reject["index"], reject["field"], reject["reason"]) == (
        "2024/01/t.xml",
        0,
        field,
        reason,
    )
    assert reject["detail"] and not reject_problems(reject)


@pytest.mark.parametrize("attrs, reason", [(' id=""', "invalid_id"), (' id="   "', "invalid_id")])
def test_empty_id_attribute_is_rejected(tmp_path, attrs, reason):
    assert only_reject(parse_one(tmp_path, thesis(attrs)))["reason"] == reason


def test_id_attribute_is_trimmed_and_kept(tmp_path):
    assert parse_one(tmp_path, thesis(' id="  my id 1 "')).records[0]["id"] == "my id 1"


def test_a_repeated_field_is_rejected(tmp_path):
    xml = thesis().replace("</thesis>", "<ticker>MSFT</ticker></thesis>")
    reject = only_reject(parse_one(tmp_path, xml))
    assert (reject["field"], reject["reason"]) == ("ticker", "duplicate_field")


def test_every_problem_is_in_the_detail_and_the_first_in_field_order_is_named(tmp_path):
    reject = only_reject(parse_one(tmp_path, thesis(confidence="2", ticker="$$", action="maybe")))
    assert (reject["field"], reject["reason"]) == ("ticker", "invalid_ticker")
    assert "'$$'" in reject["detail"] and "'maybe'" in reject["detail"] and "'2'" in reject["detail"]


def test_unknown_elements_are_ignored_and_counted(tmp_path):
    xml = (
        "<theses><meta>batch 7</meta>"
        + thesis().replace("</thesis>", "<note>n</note><note>m</note><flag/></thesis>")
        + "</theses>"
    )
    result = parse_one(tmp_path, xml)
    assert len(result.records) == 1
    assert result.counts()["unknown_elements"] == {"thesis/note": 2, "theses/meta": 1, "thesis/flag": 1}
    assert "unknown elements ignored (thesis/note: 2, theses/meta: 1, thesis/flag: 1)" in summary_line(
        result, "o.jsonl"
    )


# --- file shapes ---------------------------------------------------------------------------


def test_siblings_of_a_bad_thesis_are_still_read(tmp_path):
    xml = "<theses>" + thesis() + thesis(ticker="MSFT", action="???") + thesis(ticker="IBM") + "</theses>"
    result = parse_one(tmp_path, xml)
    assert [r["ticker"] for r in result.records] == ["AAPL", "IBM"]
    assert [(r["index"], r["reason"]) for r in result.rejects] == [(1, "invalid_action")]


@pytest.mark.parametrize(
    "xml, reason",
    [
        ("<theses></theses>", "no_theses"),
        ("<theses><!-- none --></theses>", "no_theses"),
        ("<portfolio>" + thesis() + "</portfolio>", "wrong_root"),
        ('<theses xmlns="urn:x">' + thesis() + "</theses>", "wrong_root"),
        ("<theses>" + thesis() + "</theses", "malformed_xml"),
        ("", "malformed_xml"),
        ("<thesis><ticker>&nbsp;</ticker></thesis>", "malformed_xml"),  # undefined entity, no DTD
        (thesis() + thesis(), "malformed_xml"),  # two roots
    ],
)
def test_whole_file_rejects(tmp_path, xml, reason):
    reject = only_reject(parse_one(tmp_path, xml))
    assert (reject["index"], reject["field"], reject["reason"]) == (None, None, reason)
    assert not reject_problems(reject)


def test_misplaced_theses_are_rejected_and_numbered_in_document_order(tmp_path):
    nested = thesis(ticker="MSFT").replace("</thesis>", thesis(ticker="IBM") + "</thesis>")
    xml = "<theses>" + thesis() + "<group>" + thesis(ticker="GOOG") + "</group>" + nested + "</theses>"
    result = parse_one(tmp_path, xml)
    assert sorted(r["ticker"] for r in result.records) == ["AAPL", "MSFT"]
    assert [(r["index"], r["reason"]) for r in result.rejects] == [(1, "misplaced_thesis"), (3, "misplaced_thesis")]
    assert result.counts()["unknown_elements"] == {"theses/group": 1}


def test_a_thesis_root_with_a_thesis_inside(tmp_path):
    xml = thesis().replace("</thesis>", thesis(ticker="IBM") + "</thesis>")
    result = parse_one(tmp_path, xml)
    assert [r["ticker"] for r in result.records] == ["AAPL"]
    assert [(r["index"], r["reason"]) for r in result.rejects] == [(1, "misplaced_thesis")]


# --- duplicates ----------------------------------------------------------------------------


def test_the_later_duplicate_in_sorted_path_order_is_rejected_whatever_the_creation_order(tmp_path):
    write(tmp_path, "2024/01/b.xml", thesis(' id="second"', reasoning="from b"))
    write(tmp_path, "2024/01/a.xml", thesis(' id="first"', reasoning="from a"))
    result = parse_corpus(tmp_path)
    assert [r["id"] for r in result.records] == ["first"]
    [reject] = result.rejects
    assert (reject["source_file"], reject["reason"], reject["duplicate_of"], reject["field"]) == (
        "2024/01/b.xml",
        "duplicate",
        "first",
        None,
    )
    assert "2024/01/a.xml" in reject["detail"]


def test_a_duplicate_within_one_file_and_across_months(tmp_path):
    write(tmp_path, "2024/01/a.xml", "<theses>" + thesis() + thesis(reasoning="again") + "</theses>")
    write(tmp_path, "2024/03/late.xml", thesis(ticker="aapl"))  # filed under March, dated January
    result = parse_corpus(tmp_path)
    assert len(result.records) == 1
    assert [(r["source_file"], r["index"], r["reason"]) for r in result.rejects] == [
        ("2024/01/a.xml", 1, "duplicate"),
        ("2024/03/late.xml", 0, "duplicate"),
    ]
    assert set(result.by_month()) == {"2024-01"}  # the duplicate belongs to the month of its date


def test_a_rejected_thesis_does_not_claim_its_ticker_and_date(tmp_path):
    xml = "<theses>" + thesis(action="nonsense") + thesis() + "</theses>"
    result = parse_one(tmp_path, xml)
    assert [r["index"] for r in result.rejects] == [0]
    assert len(result.records) == 1


def test_a_reused_id_on_another_ticker_and_date_is_duplicate_id(tmp_path):
    xml = (
        "<theses>"
        + thesis(' id="x1"')
        + thesis(' id="x1"', ticker="MSFT")
        + thesis(' id="AAPL-2024-01-16"', ticker="IBM")
        + thesis()
        + "</theses>"
    )
    write(tmp_path, "2024/01/a.xml", xml)
    write(tmp_path, "2024/01/b.xml", thesis(as_of_date="2024-01-16"))  # its default id was taken explicitly above
    result = parse_corpus(tmp_path)
    assert sorted(r["id"] for r in result.records) == ["AAPL-2024-01-16", "x1"]
    assert [(r["source_file"], r["index"], r["field"], r["reason"], r["duplicate_of"]) for r in result.rejects] == [
        ("2024/01/a.xml", 1, "id", "duplicate_id", "x1"),
        ("2024/01/a.xml", 3, None, "duplicate", "x1"),  # AAPL 2024-01-15 again, under its default id
        ("2024/01/b.xml", 0, "id", "duplicate_id", "AAPL-2024-01-16"),
    ]


# --- security --------------------------------------------------------------------------------


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE thesis [
  <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
  <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
  <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
  <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
  <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
  <!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
  <!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">
]>
<thesis><ticker>AAPL</ticker><as_of_date>2024-01-15</as_of_date><reasoning>&g;</reasoning><action>BUY</action></thesis>
"""


def test_billion_laughs_is_rejected_without_expansion(tmp_path):
    result = parse_one(tmp_path, BILLION_LAUGHS)
    reject = only_reject(result)
    assert reject["reason"] == "forbidden_xml"
    assert "aaaa" not in json.dumps(reject)


@pytest.mark.parametrize(
    "doctype",
    [
        '<!DOCTYPE thesis [<!ENTITY leak SYSTEM "file://{secret}">]>',
        '<!DOCTYPE thesis [<!ENTITY % leak SYSTEM "file://{secret}"> %leak;]>',
        '<!DOCTYPE thesis SYSTEM "file://{secret}">',
        "<!DOCTYPE thesis>",
    ],
)
def test_external_entities_and_dtds_are_rejected_and_nothing_leaks(tmp_path, doctype):
    secret = tmp_path / "outside" / "secret.txt"
    write(tmp_path, "outside/secret.txt", "TOP-SECRET-7f3a")
    corpus = tmp_path / "corpus"
    xml = (
        '<?xml version="1.0"?>'
        + doctype.format(secret=secret)
        + thesis(reasoning="&leak;" if "ENTITY leak" in doctype else "r")
    )
    result = parse_one(corpus, xml)
    reject = only_reject(result)
    assert (reject["reason"], reject["index"]) == ("forbidden_xml", None)
    write_jsonl_outputs(result, tmp_path / "out.jsonl", tmp_path / "out.rejects.jsonl")
    for path in (tmp_path / "out.jsonl", tmp_path / "out.rejects.jsonl"):
        assert "TOP-SECRET" not in path.read_text()


def test_no_external_resource_is_fetched(tmp_path):
    """A local HTTP server stands where an attacker's would: it must see no request at all."""
    requests: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<!ENTITY x 'pwned'>")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        write(tmp_path, "2024/01/a.xml", f'<!DOCTYPE thesis SYSTEM "{url}/dtd">' + thesis())
        write(
            tmp_path, "2024/01/b.xml", f'<!DOCTYPE thesis [<!ENTITY % p SYSTEM "{url}/pe"> %p;]>' + thesis(ticker="B")
        )
        write(
            tmp_path,
            "2024/01/c.xml",
            f'<!DOCTYPE thesis [<!ENTITY e SYSTEM "{url}/e">]>' + thesis(ticker="C", reasoning="&e;"),
        )
        write(
            tmp_path,
            "2024/01/d.xml",
            thesis(ticker="D").replace(
                "<thesis>", f'<thesis xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="{url}/x"/>'
            ),
        )
        result = parse_corpus(tmp_path)
    finally:
        server.shutdown()
    assert requests == []
    assert [r["reason"] for r in result.rejects] == ["forbidden_xml"] * 3
    assert [r["ticker"] for r in result.records] == ["D"]  # XInclude is not processed: just an unknown element
    assert "pwned" not in json.dumps(result.records)


# --- encodings and size ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, reasoning",
    [
        (
            ('<?xml version="1.0" encoding="ISO-8859-1"?>' + thesis(reasoning="café crème")).encode("latin-1"),
            "café crème",
        ),
        (('<?xml version="1.0" encoding="windows-1252"?>' + thesis(reasoning="costs 5€")).encode("cp1252"), "costs 5€"),
        (("\ufeff" + thesis(reasoning="naïve")).encode("utf-8"), "naïve"),
        (thesis(reasoning="ü").encode("utf-16"), "ü"),  # with its BOM
        (thesis(reasoning="日本株").encode("utf-8"), "日本株"),
    ],
)
def test_encodings_that_are_declared_or_detectable(tmp_path, data, reasoning):
    [record] = parse_one(tmp_path, data).records
    assert record["reasoning"] == reasoning


@pytest.mark.parametrize(
    "data",
    [
        thesis(reasoning="café").encode("latin-1"),  # undeclared, so UTF-8, which it is not
        ('<?xml version="1.0" encoding="UTF-8"?>' + thesis(reasoning="café")).encode("latin-1"),
        ('<?xml version="1.0" encoding="no-such-encoding"?>' + thesis()).encode(),
        ('<?xml version="1.0" encoding="US-ASCII"?>' + thesis(reasoning="é")).encode("utf-8"),
    ],
)
def test_bytes_that_do_not_match_the_encoding_are_bad_encoding(tmp_path, data):
    reject = only_reject(parse_one(tmp_path, data))
    assert (reject["reason"], reject["index"]) == ("bad_encoding", None)
    assert "UTF-8" in reject["detail"]


def test_a_file_over_50_mib_is_rejected_unread(tmp_path, monkeypatch):
    big = tmp_path / "2024" / "01" / "big.xml"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as fh:  # sparse: 50 MiB + 1 byte of holes, nothing written
        fh.truncate(50 * 1024 * 1024 + 1)
    reads = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    reject = only_reject(parse_corpus(tmp_path))
    assert (reject["source_file"], reject["reason"]) == ("2024/01/big.xml", "too_large")
    assert reads == []


def test_the_size_limit_is_inclusive(tmp_path):
    path = write(tmp_path, "2024/01/t.xml", thesis())
    size = path.stat().st_size
    assert len(parse_corpus(tmp_path, max_file_bytes=size).records) == 1
    assert only_reject(parse_corpus(tmp_path, max_file_bytes=size - 1))["reason"] == "too_large"


# --- the tree, errors, outputs ---------------------------------------------------------------


def test_any_depth_is_read_and_hidden_or_other_files_are_skipped(tmp_path):
    write(tmp_path, "2024/01/a/b/c/deep.xml", thesis())
    write(tmp_path, "2024/01/.hidden.xml", thesis(ticker="H1"))
    write(tmp_path, "2024/01/.MM.tmp/inflight.xml", thesis(ticker="H2"))
    write(tmp_path, "2024/01/notes.txt", "not xml")
    write(tmp_path, "2024/01/upper.XML", thesis(ticker="U"))
    result = parse_corpus(tmp_path)
    assert [r["source_file"] for r in result.records] == ["2024/01/a/b/c/deep.xml"]
    assert result.rejects == []


def test_missing_or_empty_input_is_a_corpus_error(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        parse_corpus(tmp_path / "missing")
    write(tmp_path, "2024/01/readme.txt", "no xml here")
    with pytest.raises(CorpusError, match="no .xml files"):
        parse_corpus(tmp_path)


def test_an_unreadable_file_stops_the_run_naming_it(tmp_path):
    write(tmp_path, "2024/01/ok.xml", thesis())
    (tmp_path / "2024" / "01" / "dangling.xml").symlink_to(tmp_path / "nowhere.xml")
    with pytest.raises(CorpusError, match="dangling.xml"):
        parse_corpus(tmp_path)


def test_outputs_are_written_whole_and_follow_the_schema(tmp_path):
    write(
        tmp_path,
        "in/2024/01/a.xml",
        "<theses>" + thesis() + thesis(ticker="MSFT", as_of_date="2024-01-02") + thesis(action="x") + "</theses>",
    )
    result = parse_corpus(tmp_path / "in")
    out, rejects = tmp_path / "out" / "t.jsonl", tmp_path / "out" / "t.rejects.jsonl"
    assert write_jsonl_outputs(result, out, rejects) == (2, 1)
    records, reject_rows = read_jsonl(out), read_jsonl(rejects)
    assert [r["ticker"] for r in records] == ["MSFT", "AAPL"]  # sorted by as_of_date first
    assert month_problems(records, reject_rows, "2024-01") == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t.jsonl", "t.rejects.jsonl"]  # no temp files left


def _corpus_files(rng: random.Random) -> dict[str, str]:
    files = {}
    for n in range(40):
        month = f"2024/{1 + n % 3:02d}"
        body = "".join(
            thesis(
                ticker=rng.choice(["AAPL", "MSFT", "IBM", "GOOG"]),
                as_of_date=f"2024-{1 + n % 3:02d}-{1 + rng.randrange(5):02d}",
                action=rng.choice(["buy", "SELL", "hold", "bad"]),
            )
            for _ in range(rng.randrange(1, 4))
        )
        files[f"{month}/f{rng.randrange(10**6):06d}-{n}.xml"] = f"<theses>{body}</theses>"
    return files


def test_same_input_gives_byte_identical_output_whatever_the_creation_order(tmp_path):
    files = _corpus_files(random.Random(3))
    outputs = []
    for attempt, order_seed in enumerate([1, 2]):
        names = list(files)
        random.Random(order_seed).shuffle(names)
        root = tmp_path / f"run{attempt}"
        for name in names:
            write(root / "in", name, files[name])
        result = parse_corpus(root / "in")
        write_jsonl_outputs(result, root / "o.jsonl", root / "o.rejects.jsonl")
        outputs.append(((root / "o.jsonl").read_bytes(), (root / "o.rejects.jsonl").read_bytes()))
    assert outputs[0] == outputs[1]
    records = [json.loads(line) for line in outputs[0][0].splitlines()]
    assert [(r["as_of_date"], r["ticker"], r["id"]) for r in records] == sorted(
        (r["as_of_date"], r["ticker"], r["id"]) for r in records
    )
    rejects = [json.loads(line) for line in outputs[0][1].splitlines()]
    assert any(r["reason"] == "duplicate" for r in rejects) and any(r["reason"] == "invalid_action" for r in rejects)


@pytest.mark.parametrize("batch_files, batch_bytes", [(1, 4 << 20), (3, 4 << 20), (256, 1)])
def test_read_ahead_batches_do_not_change_the_result(tmp_path, monkeypatch, batch_files, batch_bytes):
    for name, body in _corpus_files(random.Random(5)).items():
        write(tmp_path, name, body)
    in_one_batch = parse_corpus(tmp_path)  # 40 small files: one batch by default
    monkeypatch.setattr(theses_parser, "_READ_AHEAD_FILES", batch_files)
    monkeypatch.setattr(theses_parser, "_READ_AHEAD_BYTES", batch_bytes)  # 1: every file ends its batch
    batched = parse_corpus(tmp_path)
    assert batched.outcomes == in_one_batch.outcomes and batched.unknown_elements == in_one_batch.unknown_elements
    assert any(r["reason"] == "duplicate" for r in batched.rejects)  # judged across batch boundaries


# --- months ------------------------------------------------------------------------------------


def test_every_line_belongs_to_exactly_one_month(tmp_path):
    write(
        tmp_path, "2024/01/a.xml", "<theses>" + thesis() + thesis(ticker="MSFT", as_of_date="2024-02-03") + "</theses>"
    )
    write(tmp_path, "2024/02/bad-date.xml", thesis(as_of_date="2024-02-30"))
    write(tmp_path, "2024/02/broken.xml", "<thesis>")
    write(
        tmp_path,
        "2024/03/nested.xml",
        thesis(ticker="IBM", as_of_date="2024-03-01").replace("</thesis>", thesis() + "</thesis>"),
    )
    write(tmp_path, "misc/loose.xml", thesis(ticker="IBM", as_of_date="2024-05-02", action="x"))
    result = parse_corpus(tmp_path)
    by_month = result.by_month()
    assert {m: sorted((o.reject or o.record)["source_file"] for o in r.outcomes) for m, r in by_month.items()} == {
        "2024-01": ["2024/01/a.xml"],
        "2024-02": [
            "2024/01/a.xml",
            "2024/02/bad-date.xml",
            "2024/02/broken.xml",
        ],  # a date's month, else the directory's
        "2024-03": ["2024/03/nested.xml", "2024/03/nested.xml"],
        "2024-05": ["misc/loose.xml"],  # its date is real, so it has a month though its directory has none
    }
    assert sum(len(r.outcomes) for r in by_month.values()) == result.counts()["read"] == 7
    february = parse_corpus(tmp_path, months={"2024-02"})
    assert february.counts()["read"] == 3 and [r["ticker"] for r in february.records] == ["MSFT"]


def test_a_file_outside_any_month_directory_with_no_date_has_no_month(tmp_path):
    write(tmp_path, "misc/broken.xml", "<oops/>")
    assert set(parse_corpus(tmp_path).by_month()) == {None}


# --- schema checks -------------------------------------------------------------------------------


def test_schema_checks_catch_bad_lines():
    good = {
        "id": "a",
        "ticker": "AAPL",
        "as_of_date": "2024-01-15",
        "reasoning": "r",
        "support": [],
        "action": "BUY",
        "horizon_days": 5,
        "confidence": None,
        "source_file": "2024/01/a.xml",
    }
    assert record_problems(good) == []
    for change in (
        {"ticker": "aapl"},
        {"as_of_date": "2024-02-30"},
        {"horizon_days": 5.0},
        {"horizon_days": True},
        {"confidence": float("nan")},
        {"action": "Buy"},
        {"support": [""]},
        {"reasoning": ""},
    ):
        assert record_problems({**good, **change}), change
    assert record_problems({k: v for k, v in good.items() if k != "confidence"})
    assert month_problems([good], [], "2024-02")  # wrong month
    second = {**good, "id": "b", "ticker": "MSFT", "as_of_date": "2024-01-14"}
    assert month_problems([good, second], [], "2024-01") == ["records are not sorted by (as_of_date, ticker, id)"]
    assert month_problems([second, {**good, "id": "a", "ticker": "ZZ"}], [], "2024-01") == []
    assert month_problems([good, {**good, "ticker": "ZZ"}], [], "2024-01") == ["an id appears on more than one record"]
    reject = {"source_file": "a.xml", "index": None, "field": None, "reason": "malformed_xml", "detail": "d"}
    assert reject_problems(reject) == []
    assert reject_problems({**reject, "index": 0})  # a whole-file reason with an index
    assert reject_problems({**reject, "reason": "whatever"})
    assert "duplicate_id" in REJECT_REASONS


# --- property: random valid theses round-trip ----------------------------------------------------

# No whitespace at all (trimming is tested above) and only characters XML can carry.
_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Cn", "Zs", "Zl", "Zp")), min_size=1, max_size=40
)
_thesis_values = st.fixed_dictionaries(
    {
        "ticker": st.from_regex(r"[A-Z0-9][A-Z0-9.\-]{0,14}", fullmatch=True),
        "as_of_date": st.dates(min_value=dt.date(1990, 1, 1)).map(lambda d: d.isoformat()),
        "reasoning": _text,
        "support": st.lists(_text, max_size=4),
        "action": st.sampled_from(["STRONG_BUY", "BUY", "HOLD", "SELL", "STRONG_SELL"]),
        "horizon_days": st.one_of(st.none(), st.integers(1, 260)),
        "confidence": st.one_of(st.none(), st.floats(0, 1)),
    }
)


def _spelled(action: str, style: int) -> str:
    return [action, action.lower(), action.replace("_", " ").title(), action.replace("_", "-").lower()][style]


@settings(max_examples=60, deadline=None)
@given(
    values=_thesis_values,
    with_id=st.booleans(),
    style=st.integers(0, 3),
    pad=st.sampled_from(["", " ", "\n  "]),
    order_seed=st.integers(0, 1000),
    cdata=st.booleans(),
)
def test_random_valid_theses_round_trip(tmp_path_factory, values, with_id, style, pad, order_seed, cdata):
    root = tmp_path_factory.mktemp("rt")
    elem = etree.Element("thesis", id="t-1") if with_id else etree.Element("thesis")
    children = []
    for name in ("ticker", "as_of_date", "reasoning", "action", "horizon_days", "confidence"):
        value = values[name]
        if value is None:
            continue
        child = etree.Element(name)
        text = (
            _spelled(value, style)
            if name == "action"
            else (value.lower() if name == "ticker" else repr(value) if name == "confidence" else str(value))
        )
        child.text = etree.CDATA(pad + text + pad) if cdata and name == "reasoning" else pad + text + pad
        children.append(child)
    if values["support"]:
        support = etree.Element("support")
        for point in values["support"]:
            etree.SubElement(support, "point").text = pad + point + pad
        children.append(support)
    random.Random(order_seed).shuffle(children)
    elem.extend(children)
    write(root, "x/t.xml", etree.tostring(elem, xml_declaration=True, encoding="UTF-8"))

    [record] = parse_corpus(root).records
    assert record == {
        "id": "t-1" if with_id else f"{values['ticker']}-{values['as_of_date']}",
        "ticker": values["ticker"],
        "as_of_date": values["as_of_date"],
        "reasoning": values["reasoning"],
        "support": values["support"],
        "action": values["action"],
        "horizon_days": values["horizon_days"] or 5,
        "confidence": values["confidence"],
        "source_file": "x/t.xml",
    }
    assert record_problems(record) == []
