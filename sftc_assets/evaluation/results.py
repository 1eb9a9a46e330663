"""The evaluation CSV (docs/eval-and-backtest.md): one row per test thesis with the model's answer and the
forward return. `write_eval_csv` is the one writer, `read_eval_csv` the one reader (the backtest uses it),
strict about the format: a bad value is an error naming the file, the row and the column.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from sftc_core.io import BeforeSwap, atomic_path
from sftc_core.market import RETURN_STATUSES
from sftc_core.metrics import LABELS
from sftc_core.target_format import ACTIONS

EVAL_COLUMNS = (
    "id",
    "ticker",
    "as_of_date",
    "true_action",
    "predicted_action",
    "parse_ok",
    "raw_output",
    "horizon_days",
    "entry_date",
    "exit_date",
    "forward_return",
    "return_status",
)
SORT_KEYS = ["as_of_date", "ticker", "id"]


# --- the file ---------------------------------------------------------------------------------


def _iso_dates(values: pd.Series) -> pd.Series:
    dates = pd.to_datetime(values)
    return dates.dt.strftime("%Y-%m-%d").fillna("")


def write_eval_csv(frame: pd.DataFrame, path: Path | str, stamp: BeforeSwap | None = None) -> Path:
    """UTF-8, header, EVAL_COLUMNS in order, minimal quoting (raw_output keeps its newlines inside quotes)."""
    out = frame.loc[:, list(EVAL_COLUMNS)].copy()
    out["parse_ok"] = np.where(out["parse_ok"].astype(bool), "true", "false")
    for column in ("as_of_date", "entry_date", "exit_date"):
        out[column] = _iso_dates(out[column])
    with atomic_path(path, stamp) as tmp:
        out.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n", quoting=csv.QUOTE_MINIMAL, na_rep="")
    return Path(path)


def eval_csv_files(path: Path | str) -> list[Path]:
    """A CSV file, or the `*.csv` files of a directory (the eval_csv partitions), in name order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.csv eval files (materialize eval_csv or pass --eval-csv FILE)")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: eval CSV not found")
    return [path]


def read_eval_csv(path: Path | str | Sequence[Path], *, raw_output: bool = True) -> pd.DataFrame:
    """Every row of the eval CSV(s) at `path` (a file, a directory of them, or a list of files), validated and
    typed (true_action, predicted_action and return_status as Categoricals of ACTIONS, LABELS and RETURN_STATUSES);
    `source_file` says where each row came from. Errors name the file, the row (1 = first data row) and the column.
    `raw_output=False` leaves the model's text out (most of the file's bytes; the backtest has no use for it): the
    column must still be there and every row is still parsed whole.
    """
    files = [Path(p) for p in path] if isinstance(path, (list, tuple)) else eval_csv_files(path)
    if not files:
        raise FileNotFoundError("no eval CSV files given (materialize eval_csv first)")
    columns = [c for c in EVAL_COLUMNS if raw_output or c != "raw_output"]
    frames = [_validated(file, _read_text(file, columns)) for file in files]  # a header-only month: typed, no rows
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _read_text(file: Path, columns: list[str]) -> pd.DataFrame:
    """`columns` of `file`, every one as text ("NA" is a ticker, "007" an id; the checks parse the rest), read by
    pyarrow: quoted newlines kept, and a row with more or fewer fields than the header is an error naming it."""

    def unreadable(why: str) -> ValueError:
        return ValueError(f"{file}: not a readable CSV ({why}); expected the columns {', '.join(EVAL_COLUMNS)}")

    try:
        with open(file, encoding="utf-8-sig", newline="") as handle:  # pyarrow too reads past a byte-order mark
            header = next(csv.reader(handle), None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise unreadable(f"{type(exc).__name__}: {exc}") from None
    if header is None:
        raise unreadable("the file is empty")
    missing = [c for c in EVAL_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{file}: missing column(s) {', '.join(missing)}; an eval CSV has {', '.join(EVAL_COLUMNS)}")
    bad_rows: list[pa_csv.InvalidRow] = []

    def invalid_row(row: pa_csv.InvalidRow) -> str:
        bad_rows.append(row)
        return "error"

    # One thread: it numbers the rows for the errors, and on a busy machine it parses as fast as several (with a
    # third less CPU time).
    read = pa_csv.ReadOptions(use_threads=False)
    parse = pa_csv.ParseOptions(newlines_in_values=True, invalid_row_handler=invalid_row)
    convert = pa_csv.ConvertOptions(
        include_columns=columns, column_types=dict.fromkeys(columns, pa.large_string()), strings_can_be_null=False
    )  # large_string: the type pandas keeps text in (no cast)
    try:
        # The system allocator: after a parse of this size pyarrow's default pool (mimalloc) left the process's next
        # pandas.read_csv a fifth slower (measured on the bench's 1M rows: 0.39-0.46 s against 0.30-0.33 s).
        table = pa_csv.read_csv(
            file, read_options=read, parse_options=parse, convert_options=convert, memory_pool=pa.system_memory_pool()
        )
        return table.to_pandas()
    except pa.ArrowInvalid as exc:
        if not bad_rows:
            raise unreadable(str(exc)) from None
        row = bad_rows[0]
        raise ValueError(
            f"{file}: row {row.number - 1} has {row.actual_columns} fields, the header "
            f"{row.expected_columns} ({row.text[:80]!r}); a value with a comma, a quote or a newline must "
            "be quoted"
        ) from None


# The days a datetime64[ns] holds.
NS_DAYS = (np.datetime64(pd.Timestamp.min.ceil("D").date()), np.datetime64(pd.Timestamp.max.floor("D").date()))


def _days(text: pd.Series, required: bool) -> tuple[pd.Series, np.ndarray]:
    """YYYY-MM-DD strings to datetime64[ns] (NaT where not a date), parsed once per distinct value; and the rows
    whose text is not such a date (nor empty, unless `required`)."""
    codes, uniques = pd.factorize(text)
    parsed = pd.to_datetime(pd.Series(uniques, dtype=object), format="%Y-%m-%d", errors="coerce").to_numpy()
    held = (parsed >= NS_DAYS[0]) & (parsed <= NS_DAYS[1])  # pandas parses 1600-01-01 too, in a unit ns cannot hold
    bad = ~held & ((np.asarray(uniques, dtype=object) != "") | required)
    days = np.where(held, parsed, np.datetime64("NaT")).astype("datetime64[ns]")
    return pd.Series(days[codes], index=text.index), bad[codes]


def _categories(text: pd.Series, values: Sequence[str]) -> pd.Series:
    """`text` as a Categorical of `values` (missing where it is none of them): the one look-up of each row, which the
    backtest's label codes and counts by status then read as codes."""
    codes = pc.fill_null(pc.index_in(pa.array(text), value_set=pa.array(values, pa.large_string())), -1)
    return pd.Series(pd.Categorical.from_codes(codes.to_numpy().astype(np.int8), list(values)), index=text.index)


def _numbers(text: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """(values as float64 with NaN for empty, rows whose text is not a finite number nor empty). Arrow's cast parses a
    clean column in one pass; a column it cannot cast goes through pandas' to_numeric, which leaves the bad rows NaN."""
    empty = (text == "").to_numpy()
    try:
        values = pc.cast(pa.array(text.mask(empty)), pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return pd.Series(values, index=text.index), (np.isnan(values) & ~empty) | np.isinf(values)


def _surely_distinct(text: pd.Series) -> bool:
    """True when no value of `text` repeats; False when one may (a repeat, a rare key collision, a missing or non-ASCII
    value): then look exactly. Cheaper than hashing a million strings: each value padded with NULs to whole 8-byte
    words, its words mixed into one 64-bit key, the keys sorted; distinct keys are distinct values."""
    values = pa.array(text)
    values = (values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values).cast(pa.large_string())
    if len(values) < 2 or values.null_count:
        return len(values) < 2
    width = 8 * max(1, -(-pc.max(pc.binary_length(values)).as_py() // 8))
    padded = pc.utf8_rpad(values, width=width, padding="\0")  # pads characters: a non-ASCII value comes out wider
    offsets = np.frombuffer(padded.buffers()[1], dtype=np.int64, count=len(padded) + 1, offset=8 * padded.offset)
    if offsets[-1] - offsets[0] != len(padded) * width:
        return False
    data = np.frombuffer(padded.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    words = data.view(np.uint64).reshape(len(padded), -1)
    keys = words[:, 0].copy()
    for column in range(1, words.shape[1]):
        keys = keys * np.uint64(0x9E3779B97F4A7C15) ^ words[:, column]  # wraps modulo 2**64
    keys.sort()
    return not (keys[1:] == keys[:-1]).any()


def _validated(file: Path, raw: pd.DataFrame) -> pd.DataFrame:
    """`raw` (_read_text's) checked and typed."""

    def check(column: str, bad: np.ndarray, expected: str) -> None:
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = raw[column].iloc[row]
            shown = "(empty)" if value == "" else repr(value)
            raise ValueError(f"{file}: row {row + 1}, column {column}: {shown} {expected}")

    def dates(column: str, required: bool) -> pd.Series:
        parsed, bad = _days(raw[column], required)
        check(column, bad, "is not a date written YYYY-MM-DD" + ("" if required else " (or empty)"))
        return parsed

    check("id", (raw["id"] == "").to_numpy(), "is empty; every row needs an id")
    if not _surely_distinct(raw["id"]):  # the exact (slower) look only where a repeat is possible
        check("id", raw["id"].duplicated().to_numpy(), "appears on an earlier row too; one row per test thesis")
    check("ticker", (raw["ticker"] == "").to_numpy(), "is empty; every row needs a ticker")
    true_action, predicted_action = (
        _categories(raw["true_action"], ACTIONS),
        _categories(raw["predicted_action"], LABELS),
    )
    check("true_action", true_action.isna().to_numpy(), f"is not an action ({', '.join(ACTIONS)})")
    check("predicted_action", predicted_action.isna().to_numpy(), f"is not an action ({', '.join(ACTIONS)}) or empty")
    parse_ok = (raw["parse_ok"] == "true").to_numpy()
    check("parse_ok", ~parse_ok & (raw["parse_ok"] != "false").to_numpy(), "must be true or false")
    check(
        "parse_ok",
        parse_ok != (predicted_action != "").to_numpy(),
        "disagrees with predicted_action (true exactly when an action was parsed)",
    )
    horizon, not_number = _numbers(raw["horizon_days"])
    check(
        "horizon_days",
        not_number | (horizon.isna() | (horizon < 1) | (horizon != horizon.round())).to_numpy(),
        "is not a whole number of sessions >= 1",
    )
    as_of, entry, exit_ = dates("as_of_date", True), dates("entry_date", False), dates("exit_date", False)
    check(
        "entry_date",
        (entry <= as_of).to_numpy(),
        "is not after as_of_date (no look-ahead: entry is the first session after it)",
    )
    check("exit_date", (exit_ <= entry).to_numpy(), "is not after entry_date")
    status = _categories(raw["return_status"], RETURN_STATUSES)
    check("return_status", status.isna().to_numpy(), f"is not a return status ({', '.join(RETURN_STATUSES)})")
    forward, not_number = _numbers(raw["forward_return"])
    check("forward_return", not_number, "is not a number (or empty)")
    status_ok = (status == "ok").to_numpy()
    check("forward_return", status_ok & forward.isna().to_numpy(), "is empty but return_status is ok")
    check("forward_return", ~status_ok & forward.notna().to_numpy(), "is set but return_status says there is no return")
    check(
        "entry_date",
        status_ok & (entry.isna() | exit_.isna()).to_numpy(),
        "is empty but return_status is ok (entry and exit dates are needed)",
    )
    typed = raw.loc[:, [c for c in EVAL_COLUMNS if c in raw.columns]]
    typed = typed.assign(
        true_action=true_action,
        predicted_action=predicted_action,
        as_of_date=as_of,
        parse_ok=parse_ok,
        horizon_days=horizon.astype("int64"),
        entry_date=entry,
        exit_date=exit_,
        forward_return=forward,
        return_status=status,
        source_file=file.name,
    )
    return typed
