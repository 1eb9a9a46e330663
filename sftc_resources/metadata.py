"""What every assets module shares: code versions, the run manifest as metadata, Markdown and plots."""

from __future__ import annotations

import ast
import base64
import hashlib
from pathlib import Path
from types import ModuleType

import dagster as dg

from sftc_core.configs import CONFIG_DIR, PROJECT_ROOT
from sftc_core.manifest import run_manifest


def _module_file(name: str) -> Path | None:
    """The source file of an sftc module name, found on disk without importing it (a kernel needing triton stays unimported)."""
    base = PROJECT_ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_names(path: Path) -> set[str]:
    """Every sftc module `path` imports, at the top or inside a function (`from a.b import c` may name module a.b.c)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.startswith("sftc_")}


def sftc_sources(*modules: ModuleType) -> list[Path]:
    """The files of `modules` and of every sftc module they reach through imports, sorted."""
    todo, seen = [Path(m.__file__) for m in modules], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(found for name in _imported_names(path) if (found := _module_file(name)) is not None)
    return sorted(seen)


def code_version(*modules: ModuleType) -> str:
    """Hash of the source an asset runs: its logic modules and everything of ours they import. An asset is stale
    exactly when code it runs changed, and a change elsewhere leaves it alone."""
    digest = hashlib.sha256()
    for path in sftc_sources(*modules):
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def manifest_metadata(*config_files: str) -> dict:
    """`config_files` are relative to configs/ (e.g. "sft_config.yaml"); the profiles are always in."""
    manifest = run_manifest([CONFIG_DIR / name for name in config_files] + sorted((CONFIG_DIR / "profiles").glob("*.yaml")))
    return {
        "git_commit": manifest["git_commit"],
        "git_dirty": dg.MetadataValue.bool(bool(manifest["git_dirty"])),
        "config_hash": manifest["config_hash"],
        "run_manifest": dg.MetadataValue.json(manifest),
    }


def image_markdown(png_path: Path, alt: str) -> dg.MetadataValue:
    """A PNG inlined in Markdown metadata, so the web UI shows the picture itself."""
    data = base64.b64encode(Path(png_path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")
