"""Thesis XML files (docs/thesis-xml.md) to accepted records and reject lines.

Every `<thesis>` of every file ends as exactly one accepted record or one reject line; a file that
cannot be read at all is one reject line. Where the spec is silent (data/samples/README.md lists it):

- Each thesis gets one reject line: `field`/`reason` are its first problem in field order
  (id, ticker, as_of_date, reasoning, support, action, horizon_days, confidence); `detail` lists all.
- `index` is the 0-based position of the `<thesis>` among all `<thesis>` elements of its file in
  document order. A `<thesis>` that is neither the root nor a child of the `<theses>` root is
  rejected as `misplaced_thesis`; a `<theses>` root without any `<thesis>` is rejected as `no_theses`.
- Duplicates are judged among theses that pass every field rule, in corpus order (sorted
  `source_file`, then index): the first one is accepted; a later one with the same (ticker,
  as_of_date) is `duplicate`, a later one with another (ticker, as_of_date) but the same id is
  `duplicate_id` (field `id`). Both name the accepted id in `duplicate_of`.
- Empty optional elements count as absent. Ticker and action must be ASCII (no Unicode case tricks);
  horizon_days is written with digits only ("5.0" is rejected); confidence must be finite.
- A field element holding child elements is `unexpected_element` (use CDATA for markup); comments
  and processing instructions inside text are dropped. `<support>` holds either text or `<point>`
  children, not both. Unknown children of `<thesis>` and `<theses>` are ignored and counted as
  `parent/name`.
- Month of a line (the monthly partitions): the month of its as_of_date when that is a real date;
  else (whole-file and misplaced rejects too) the month directory `YYYY/MM/` the file lives in, else None.
"""

from __future__ import annotations

import functools
import math
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from lxml import etree

from sftc_assets.theses.layout import CorpusError, month_of_file, thesis_files
from sftc_assets.theses.schema import (
    HORIZON_DEFAULT,
    HORIZON_MAX,
    HORIZON_MIN,
    REASONING_MAX_CHARS,
    RECORD_FIELDS,
    TICKER_PATTERN,
    calendar_date,
)
from sftc_core.io import BeforeSwap, atomic_path, atomic_write_jsonl
from sftc_core.progress import Tracker
from sftc_core.target_format import ACTIONS

MAX_FILE_BYTES = 50 * 1024 * 1024
_MAX_DEPTH = 256  # libxml2's limit without XML_PARSE_HUGE
_READ_CHUNK = 1 << 20
_READ_AHEAD_FILES, _READ_AHEAD_BYTES = 256, 4 << 20

_DIGITS = re.compile(r"[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ACTION_SEPARATORS = re.compile(r"[\s\-]+")
_FIELD_ORDER = RECORD_FIELDS[:-1]  # every field but source_file, in the order problems are reported
_FORBIDDEN_DETAIL = "uses a DOCTYPE (DTD or entity declarations are forbidden; entities are never expanded); remove it"
# A file that fails to parse and declares a DOCTYPE is judged by the DOCTYPE (ASCII-compatible or UTF-16 bytes).
_DOCTYPE_MARKERS = tuple("<!DOCTYPE".encode(codec) for codec in ("ascii", "utf-16-le", "utf-16-be"))
_ENCODING_ERRORS = {
    etree.ErrorTypes.ERR_INVALID_ENCODING,
    etree.ErrorTypes.ERR_UNSUPPORTED_ENCODING,
    etree.ErrorTypes.ERR_UNKNOWN_ENCODING,
}


class _ExternalReadRefused(Exception):
    pass


class _RefuseExternal(etree.Resolver):
    """Second line of defence: should libxml2 ever try to load an external resource, refuse it."""

    def resolve(self, system_url, public_id, context):
        raise _ExternalReadRefused(system_url)


def _hardened_parser() -> etree.XMLParser:
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False
    )
    parser.resolvers.add(_RefuseExternal())
    return parser


# --- outcomes ------------------------------------------------------------------------------


class Outcome(NamedTuple):
    """What became of one `<thesis>` (or of one whole file): a record or a reject, and its month."""

    month: str | None
    record: dict | None = None
    reject: dict | None = None


@dataclass
class ParseResult:
    """Outcomes in corpus order, and every unknown element met as (month, "parent/name")."""

    outcomes: list[Outcome] = field(default_factory=list)
    unknown_elements: list[tuple[str | None, str]] = field(default_factory=list)

    @property
    def records(self) -> list[dict]:
        """Accepted records sorted by (as_of_date, ticker, id): the same input gives the same bytes."""
        rows = [o.record for o in self.outcomes if o.record is not None]
        return sorted(rows, key=lambda r: (r["as_of_date"], r["ticker"], r["id"]))

    @property
    def rejects(self) -> list[dict]:
        """Reject lines in corpus order (sorted source_file, then index)."""
        return [o.reject for o in self.outcomes if o.reject is not None]

    def for_months(self, months: Iterable[str | None]) -> ParseResult:
        wanted = set(months)
        return ParseResult(
            [o for o in self.outcomes if o.month in wanted],
            [u for u in self.unknown_elements if u[0] in wanted],
        )

    def by_month(self) -> dict[str | None, ParseResult]:
        """One result per month present, in one pass."""
        months: dict[str | None, ParseResult] = {}
        for outcome in self.outcomes:
            months.setdefault(outcome.month, ParseResult()).outcomes.append(outcome)
        for month, name in self.unknown_elements:
            months.setdefault(month, ParseResult()).unknown_elements.append((month, name))
        return months

    def counts(self) -> dict:
        rejects = self.rejects
        reasons = Counter(r["reason"] for r in rejects)
        unknown = Counter(name for _, name in self.unknown_elements)
        return {
            "files": len({(o.record or o.reject)["source_file"] for o in self.outcomes}),
            "read": len(self.outcomes),
            "accepted": len(self.outcomes) - len(rejects),
            "rejected": len(rejects),
            "reject_reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
            "unknown_elements": dict(sorted(unknown.items(), key=lambda kv: (-kv[1], kv[0]))),
        }


# --- one thesis ------------------------------------------------------------------------------


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _show(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _text(elem, name: str, reason: str = "unexpected_element") -> str:
    """Trimmed text of a text-only element (CDATA is text; comments and PIs dropped).

    Callers read a leaf (`not len(elem)`) as `(elem.text or "").strip()` themselves: that saves a call
    per field in the hot loop, and this function gives the same for a leaf.
    """
    text = elem.text or ""
    for child in elem:
        if isinstance(child.tag, str):
            raise _Invalid(reason, f"<{name}> must hold text only, found <{child.tag}> inside; use CDATA for markup")
        text += child.tail or ""
    return text.strip()


# A corpus repeats few distinct tickers, dates, actions, horizons and confidences, so each of these
# checks runs once per distinct text; a rejected text raises anew every time (exceptions are not cached).
_once_per_text = functools.lru_cache(maxsize=4096)


@_once_per_text
def _ticker(text: str) -> str:
    ticker = text.upper()
    if not text.isascii() or not TICKER_PATTERN.fullmatch(ticker):
        raise _Invalid(
            "invalid_ticker",
            f"ticker {_show(text)} is not 1-15 ASCII letters, digits, '.' or '-' "
            "starting with a letter or digit (e.g. AAPL, BRK.B)",
        )
    return ticker


@_once_per_text
def _date(text: str) -> str:
    if calendar_date(text) is None:
        raise _Invalid(
            "invalid_date", f"as_of_date {_show(text)} is not a real calendar date written YYYY-MM-DD (e.g. 2024-01-15)"
        )
    return text


def _reasoning(text: str) -> str:
    if len(text) > REASONING_MAX_CHARS:
        raise _Invalid("too_long", f"reasoning has {len(text)} characters; shorten it to at most {REASONING_MAX_CHARS}")
    return text


@_once_per_text
def _action(text: str) -> str:
    action = _ACTION_SEPARATORS.sub("_", text).upper()
    if not text.isascii() or action not in ACTIONS:
        raise _Invalid(
            "invalid_action",
            f"action {_show(text)} is not one of {', '.join(ACTIONS)} (case, spaces and hyphens are free)",
        )
    return action


@_once_per_text
def _horizon(text: str) -> int:
    days = int(text) if _DIGITS.fullmatch(text) else None
    if days is None or not HORIZON_MIN <= days <= HORIZON_MAX:
        raise _Invalid(
            "invalid_horizon",
            f"horizon_days {_show(text)} is not a whole number of days in {HORIZON_MIN}..{HORIZON_MAX}",
        )
    return days


@_once_per_text
def _confidence(text: str) -> float:
    value = float(text) if _NUMBER.fullmatch(text) else math.nan
    if not 0 <= value <= 1:  # NaN fails this too
        raise _Invalid("invalid_confidence", f"confidence {_show(text)} is not a number in [0, 1] (e.g. 0.7)")
    return value + 0.0  # -0.0 becomes 0.0


def _support(elem) -> list[str]:
    """Plain text is one point, `<point>` children are the points, an empty element is no point."""
    points = []
    loose = elem.text or ""
    for child in elem:
        tag = child.tag
        if tag == "point":
            text = _text(child, "point", "invalid_support") if len(child) else (child.text or "").strip()
            if not text:
                raise _Invalid(
                    "invalid_support", f"point {len(points) + 1} of <support> is empty; remove it or give it text"
                )
            points.append(text)
        elif isinstance(tag, str):
            raise _Invalid("invalid_support", f"<support> may only hold <point> children, found <{tag}>")
        tail = child.tail
        if tail:
            loose += tail
    loose = loose.strip()
    if not points:
        return [loose] if loose else []
    if loose:
        raise _Invalid(
            "invalid_support", f"<support> mixes text {_show(loose)} with <point> children; put the text in a <point>"
        )
    return points


_TEXT_FIELDS: dict[str, Callable[[str], object]] = {
    "ticker": _ticker,
    "as_of_date": _date,
    "reasoning": _reasoning,
    "action": _action,
    "horizon_days": _horizon,
    "confidence": _confidence,
}
_REQUIRED = ("ticker", "as_of_date", "reasoning", "action")


def _read_thesis(elem) -> tuple[dict, list[tuple[str, str, str]], list[str]]:
    """Normalised fields, problems as (field, reason, detail) in field order, and unknown child names.

    `values` holds every field element met: its normalised value, or None for an empty optional
    field or a field with a problem. One pass over the children: this is the hot loop of a corpus parse.
    """
    values: dict = {}
    problems: list[tuple[str, str, str]] = []
    unknown: list[str] = []
    for child in elem:
        tag = child.tag
        check = _TEXT_FIELDS.get(tag)
        if check is None and tag != "support":
            if isinstance(tag, str) and tag != "thesis":  # comments / PIs; a nested thesis is judged on its own
                unknown.append("thesis/" + tag)
            continue
        if tag in values:
            problems.append((tag, "duplicate_field", f"<{tag}> appears more than once; keep one"))
            continue
        value = None
        try:
            if check is None:
                value = _support(child)
            else:
                text = _text(child, tag) if len(child) else (child.text or "").strip()
                if text:
                    value = check(text)
                elif tag in _REQUIRED:
                    problems.append((tag, "empty_field", f"<{tag}> is empty; it is required"))
        except _Invalid as exc:
            problems.append((tag, exc.reason, exc.detail))
        values[tag] = value
    for name in _REQUIRED:
        if name not in values:
            problems.append((name, "missing_field", f"<{name}> is missing; it is required"))
    raw_id = elem.get("id")
    if raw_id is not None:
        if raw_id.strip():
            values["id"] = raw_id.strip()
        else:
            problems.append(
                (
                    "id",
                    "invalid_id",
                    "id attribute is empty; give it a value or remove it (the default is TICKER-YYYY-MM-DD)",
                )
            )
    if len(problems) > 1:
        problems.sort(key=lambda p: _FIELD_ORDER.index(p[0]))
    return values, problems, unknown


# --- one file ------------------------------------------------------------------------------


def _reject(source_file: str, index: int | None, field_name: str | None, reason: str, detail: str, **extra) -> dict:
    return {
        "source_file": source_file,
        "index": index,
        "field": field_name,
        "reason": reason,
        "detail": detail,
        **extra,
    }


def _read_capped(path: str, limit: int) -> bytes | None:
    """The bytes of the file, or None when it holds more than `limit` bytes (then it is not read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO put in place after the listing must not hang the parse
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CorpusError(
                f"{path}: not a regular file (a FIFO, socket or device named *.xml); remove it from the input tree"
            )
        size = info.st_size
        if size > limit:
            return None
        data = os.read(fd, size + 1)  # a regular file gives all of it in one read
        while len(data) != size and len(data) <= limit:  # a short read, or it grew: read on to EOF or past the limit
            more = os.read(fd, min(_READ_CHUNK, limit + 1 - len(data)))  # os.read allocates the count it is given
            if not more:
                break
            data += more
    finally:
        os.close(fd)
    return data if len(data) <= limit else None


def _read_ahead(root_prefix: str, files: list[str], max_file_bytes: int) -> Iterator[list[tuple[str, bytes | None]]]:
    """(source_file, bytes) of each file in order, a batch of up to 256 files or ~4 MiB at a time; bytes
    are None for a file larger than `max_file_bytes`.

    Parsing a batch after reading it, rather than file by file, keeps the system calls of reading from
    evicting the parser's and validators' working set from the CPU caches between two files
    (measured: ~15% of a corpus parse).
    """
    batch: list[tuple[str, bytes | None]] = []
    batch_bytes = 0
    for source_file in files:
        path = root_prefix + source_file
        try:
            data = _read_capped(path, max_file_bytes)
        except OSError as exc:
            raise CorpusError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        batch.append((source_file, data))
        batch_bytes += 0 if data is None else len(data)
        if len(batch) == _READ_AHEAD_FILES or batch_bytes >= _READ_AHEAD_BYTES:
            yield batch
            batch, batch_bytes = [], 0
    if batch:
        yield batch


def _load_root(data: bytes | None, source_file: str, parser: etree.XMLParser, max_file_bytes: int):
    """The root element of a file's bytes (None: the file is too large), or a whole-file reject line."""
    if data is None:
        return None, _reject(
            source_file, None, None, "too_large", f"file is larger than {max_file_bytes} bytes; split it"
        )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        if any(marker in data for marker in _DOCTYPE_MARKERS):  # e.g. libxml2's own entity-amplification limit
            return None, _reject(source_file, None, None, "forbidden_xml", _FORBIDDEN_DETAIL)
        if exc.code in _ENCODING_ERRORS:
            detail = f"{exc.msg}; save the file as UTF-8 or name its encoding in the XML declaration"
            return None, _reject(source_file, None, None, "bad_encoding", detail)
        if "Excessive depth" in exc.msg:  # libxml2 would lift the limit with XML_PARSE_HUGE, which we never set
            return None, _reject(
                source_file,
                None,
                None,
                "malformed_xml",
                f"elements nested deeper than {_MAX_DEPTH} levels; a thesis file needs a handful: flatten it",
            )
        return None, _reject(source_file, None, None, "malformed_xml", f"not well-formed XML: {exc.msg}")
    except _ExternalReadRefused:
        return None, _reject(
            source_file, None, None, "forbidden_xml", "refers to an external resource; theses must be self-contained"
        )
    docinfo = root.getroottree().docinfo
    # Any DOCTYPE leaves an internal or external subset (docinfo.doctype is only built from these two).
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        return None, _reject(source_file, None, None, "forbidden_xml", _FORBIDDEN_DETAIL)
    if root.tag not in ("thesis", "theses"):
        detail = f"root element is <{root.tag}>; expected <thesis> or <theses> (without a namespace)"
        return None, _reject(source_file, None, None, "wrong_root", detail)
    return root, None


class _Corpus:
    """Builds a ParseResult in corpus order, a batch of files at a time, judging duplicates as it goes."""

    def __init__(self, max_file_bytes: int):
        self.result = ParseResult()
        self.max_file_bytes = max_file_bytes
        self.parser = _hardened_parser()
        self.first_of_key: dict[tuple[str, str], str] = {}
        self.first_of_id: dict[str, tuple[str, int]] = {}

    def add_files(self, batch: list[tuple[str, bytes | None]]) -> None:
        """Parse a batch of files (source_file, bytes), then judge them in order: one phase at a time
        keeps the parser's and then the validators' working set in the CPU caches (measured: ~5% of a parse)."""
        loaded = [_load_root(data, source_file, self.parser, self.max_file_bytes) for source_file, data in batch]
        for (source_file, _), (root, file_reject) in zip(batch, loaded):
            self._add_file(source_file, root, file_reject)

    def _add_file(self, source_file: str, root, file_reject: dict | None) -> None:
        if file_reject is not None:
            self.result.outcomes.append(Outcome(month_of_file(source_file), reject=file_reject))
            return
        if root.tag == "theses":
            unknown = ["theses/" + c.tag for c in root if isinstance(c.tag, str) and c.tag != "thesis"]
            if unknown:
                home_month = month_of_file(source_file)
                self.result.unknown_elements.extend((home_month, name) for name in unknown)
        theses = list(root.iter("thesis"))
        if not theses:
            detail = "<theses> holds no <thesis>; add one or remove the file"
            self.result.outcomes.append(
                Outcome(month_of_file(source_file), reject=_reject(source_file, None, None, "no_theses", detail))
            )
            return
        placed_parent = root if root.tag == "theses" else None  # a <thesis> is the root or a child of <theses>
        for index, elem in enumerate(theses):
            parent = elem.getparent()
            if parent is not placed_parent:
                detail = f"<thesis> inside <{parent.tag}>; a <thesis> must be the root or a child of the <theses> root"
                reject = _reject(source_file, index, None, "misplaced_thesis", detail)
                self.result.outcomes.append(Outcome(month_of_file(source_file), reject=reject))
                continue
            self._add_thesis(elem, source_file, index)

    def _add_thesis(self, elem, source_file: str, index: int) -> None:
        values, problems, unknown = _read_thesis(elem)
        date = values.get("as_of_date")
        month = date[:7] if date else month_of_file(source_file)  # the file's month only when the date is not usable
        if unknown:
            self.result.unknown_elements.extend((month, name) for name in unknown)
        if problems:
            field_name, reason, _ = problems[0]
            detail = "; ".join(p[2] for p in problems)
            self.result.outcomes.append(Outcome(month, reject=_reject(source_file, index, field_name, reason, detail)))
            return
        ticker = values["ticker"]
        record_id = values.get("id") or f"{ticker}-{date}"
        key = (ticker, date)
        if key in self.first_of_key:
            first = self.first_of_key[key]
            detail = f"{ticker} on {date} was already given by thesis {first!r} ({self._where(first)}); keep one"
            reject = _reject(source_file, index, None, "duplicate", detail, duplicate_of=first)
        elif record_id in self.first_of_id:
            detail = f"id {record_id!r} is already used by {self._where(record_id)}; ids must be unique in the corpus"
            reject = _reject(source_file, index, "id", "duplicate_id", detail, duplicate_of=record_id)
        else:
            self.first_of_key[key] = record_id
            self.first_of_id[record_id] = (source_file, index)
            horizon, support = values.get("horizon_days"), values.get("support")
            record = {
                "id": record_id,
                "ticker": ticker,
                "as_of_date": date,
                "reasoning": values["reasoning"],
                "support": [] if support is None else support,
                "action": values["action"],
                "horizon_days": HORIZON_DEFAULT if horizon is None else horizon,
                "confidence": values.get("confidence"),
                "source_file": source_file,
            }
            self.result.outcomes.append(Outcome(month, record, None))  # positional: the hot path, keywords cost
            return
        self.result.outcomes.append(Outcome(month, reject=reject))

    def _where(self, record_id: str) -> str:
        source_file, index = self.first_of_id[record_id]
        return f"{source_file} index {index}"


def parse_corpus(
    input_dir: Path | str,
    *,
    months: Iterable[str] | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
    progress_log: Callable[[str], None] | None = None,
) -> ParseResult:
    """Parse every `*.xml` under `input_dir` (any depth) in sorted path order.

    Duplicates are judged across the whole corpus; `months` then keeps only the outcomes of those
    months (YYYY-MM). No `.xml` file at all is a CorpusError, as is a missing directory. Progress over the
    files goes to `progress_log` now and then (and to a bar on a command's terminal).
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise CorpusError(f"input directory {root} does not exist or is not a directory")
    files = thesis_files(root)
    if not files:
        raise CorpusError(f"no .xml files under {root} (searched at any depth, hidden names skipped)")
    corpus = _Corpus(max_file_bytes)
    root_prefix = os.path.join(root, "")  # joined once: a string concatenation per file is all that is left
    with Tracker("parsing theses", len(files), "file", log=progress_log) as progress:
        for batch in _read_ahead(root_prefix, files, max_file_bytes):
            corpus.add_files(batch)
            progress.advance(len(batch))
    return corpus.result if months is None else corpus.result.for_months(months)


def write_jsonl_outputs(
    result: ParseResult, output: Path | str, rejects: Path | str, stamp: BeforeSwap | None = None
) -> tuple[int, int]:
    """Write the records and the reject lines (each with `stamp`'s marker); returns (records, rejects) written.

    Both are complete before either is renamed into place, and the records only after the rejects,
    so a failure leaves the previous pair untouched (or at worst a new rejects file beside old records).
    """
    with atomic_path(output, stamp) as records_tmp, atomic_path(rejects, stamp) as rejects_tmp:
        return atomic_write_jsonl(records_tmp, result.records), atomic_write_jsonl(rejects_tmp, result.rejects)


def summary_line(result: ParseResult, output: Path | str) -> str:
    """`read 120 theses in 40 files: 113 accepted, 7 rejected (duplicate: 2, ...) -> out.jsonl`."""
    counts = result.counts()
    reasons = ", ".join(f"{name}: {n}" for name, n in counts["reject_reasons"].items())
    line = (
        f"read {counts['read']} theses in {counts['files']} files: "
        f"{counts['accepted']} accepted, {counts['rejected']} rejected"
    )
    line += f" ({reasons})" if reasons else ""
    if counts["unknown_elements"]:
        unknown = ", ".join(f"{name}: {n}" for name, n in counts["unknown_elements"].items())
        line += f", unknown elements ignored ({unknown})"
    return f"{line} -> {output}"
