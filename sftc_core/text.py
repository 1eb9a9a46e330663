"""Small text helpers for people: Markdown tables, byte sizes, figures rounded to 3 significant digits, durations."""

from __future__ import annotations

import math

SIGNIFICANT_DIGITS = 3


def markdown_table(rows: list[dict], columns: list[str] | None = None, max_cell: int = 80) -> str:
    if not rows:
        return "_(none)_"
    columns = columns or list(rows[0])

    def cell(value: object) -> str:
        text = (
            "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")
        )  # a value not given: an empty cell
        return text if len(text) <= max_cell else text[: max_cell - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def format_bytes(count: int | float) -> str:
    if abs(count) < 1024:
        return f"{count:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if abs(count) < 1024:
            return f"{count:.1f} {unit}"
    return f"{count / 1024:.1f} TiB"


def round_significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`value` to `digits` significant digits (0.1542028985507246 -> 0.154, 14555.3 -> 14600.0);
    NaN and inf as they are."""
    if not math.isfinite(value) or value == 0:
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def format_number(value: float | int | None, digits: int = SIGNIFICANT_DIGITS) -> str:
    """An int with thousands separators, a float to `digits` significant digits: 1,152 / 0.289 / 14,600 / 2.1e-05."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    rounded = round_significant(value, digits)
    if rounded != 0 and abs(rounded) < 1e-4:
        return f"{rounded:.{digits - 1}e}"
    if abs(rounded) >= 10 ** (digits - 1):
        return f"{rounded:,.0f}"
    return f"{rounded:.{digits}g}"


def format_share(value: float | None, digits: int = SIGNIFICANT_DIGITS) -> str:
    """A share (0..1, or a return) as a percentage to `digits` significant digits: 0.2890625 -> 28.9%."""
    return "n/a" if value is None else f"{format_number(float(value) * 100, digits)}%"


def format_duration(seconds: float | None) -> str:
    """45 s, 3 min 20 s, 2 h 05 min: how long, for people."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
