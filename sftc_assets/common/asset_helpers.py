"""What every asset module shares: code versions, the run manifest as metadata, Markdown and plots."""

from __future__ import annotations

import base64
import hashlib
import inspect
from pathlib import Path
from types import ModuleType

import dagster as dg

from sftc_assets.common.manifest import run_manifest
from sftc_resources.settings import CONFIG_DIR


def code_version(*modules: ModuleType) -> str:
    """Hash of the logic modules' source: an asset is stale exactly when its logic changed."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:12]


def manifest_metadata(*config_files: str) -> dict:
    """`config_files` are relative to configs/ (e.g. "sft_config.yaml"); the active profile is always in."""
    manifest = run_manifest([CONFIG_DIR / name for name in config_files] + sorted((CONFIG_DIR / "profiles").glob("*.yaml")))
    return {
        "git_commit": manifest["git_commit"],
        "git_dirty": dg.MetadataValue.bool(bool(manifest["git_dirty"])),
        "config_hash": manifest["config_hash"],
        "run_manifest": dg.MetadataValue.json(manifest),
    }


def markdown_table(rows: list[dict], columns: list[str] | None = None, max_cell: int = 80) -> str:
    if not rows:
        return "_(none)_"
    columns = columns or list(rows[0])

    def cell(value: object) -> str:
        text = str(value).replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= max_cell else text[: max_cell - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def image_markdown(png_path: Path, alt: str) -> dg.MetadataValue:
    """A PNG inlined in Markdown metadata, so the web UI shows the picture itself."""
    data = base64.b64encode(Path(png_path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")
