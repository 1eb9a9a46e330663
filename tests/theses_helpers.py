"""Small thesis XML builders shared by the theses tests."""

from __future__ import annotations

from pathlib import Path

BASE_FIELDS = {"ticker": "AAPL", "as_of_date": "2024-01-15", "reasoning": "Momentum is strong.", "action": "BUY"}


def thesis(attrs: str = "", **fields: str | None) -> str:
    """A <thesis> with BASE_FIELDS overridden by `fields` (None leaves a field out); values are raw XML."""
    merged = {**BASE_FIELDS, **fields}
    body = "".join(f"<{name}>{value}</{name}>" for name, value in merged.items() if value is not None)
    return f"<thesis{attrs}>{body}</thesis>"


def write(root: Path, rel: str, content: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path
