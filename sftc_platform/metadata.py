"""What every assets module shares: versions (code and settings), the run manifest as metadata, the stamp
that marks what an asset writes, figures for people (rounded, one line of summary, per partition), Markdown and
plots."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import dagster as dg

from sftc_core.artifacts import Stamp
from sftc_core.configs import PROJECT_ROOT
from sftc_core.manifest import git_state, package_versions
from sftc_core.settings import Settings
from sftc_core.text import round_significant

# The log record attribute carrying an asset's one-line summary (report_summary): `sftc run` prints it.
SUMMARY_EXTRA = "sftc_summary"

# What each asset's output depends on among the settings (dotted fields of Settings). A change to any of them
# enters the asset's code version, so exactly that asset is stale (and what reads it, through its inputs).
SETTINGS_READ: dict[str, tuple[str, ...]] = {
    "raw_xml": ("profile.corpus",),
    "thesis_jsonl": (),
    "hf_splits": (
        "train_start_date",
        "train_end_date",
        "test_start_date",
        "test_end_date",
        "sft.splits",
        "sft.prompt",
        "sft.special_tokens",
    ),
    "base_checkpoint": ("profile.model", "sft.prompt", "train_start_date", "train_end_date"),
    "nemo_jsonl": ("sft",),
    "bf16_checkpoint": (),
    "nemo_model": (),
    "sft_model": ("train_backend", "profile.training", "profile.evaluation", "sft"),
    "eval_csv": (
        "profile.evaluation",
        "profile.price_source",
        "eval_config.prices",
        "sft.prompt",
        "sft.special_tokens",
    ),
    "backtest_report": (
        "backtest",
        "profile.price_source",
        "eval_config.prices",
        "test_start_date",
        "test_end_date",
        "profile.corpus",
        "profile.model.knowledge_cutoff",
    ),
    # The GPU plan of the full profile (sftc_assets/training/gpu_plan.py), its cost (estimate.py) and the backend and
    # dates it may take from here.
    "validation_report": (
        "profiles",
        "reference_models",
        "finetune",
        "cluster",
        "sft.special_tokens",
        "sft.max_seq_length",
        "eval_config.prices",
        "train_backend",
        "test_start_date",
        "test_end_date",
        "nemo_python_override",
        "sft.prompt",
    ),
}


def _module_file(name: str) -> Path | None:
    """The source file of an sftc module name, found on disk without importing it
    (a kernel needing triton stays unimported)."""
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


def source_hash(*modules: ModuleType) -> str:
    """Hash of the source an asset runs: its logic modules and everything of ours they import."""
    digest = hashlib.sha256()
    for path in sftc_sources(*modules):
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def settings_read(settings: Settings, asset: str) -> dict:
    """The settings an asset's output depends on, as JSON-able values (the NeMo config only for the NeMo backend)."""
    fields = SETTINGS_READ[asset] + (("finetune",) if asset == "sft_model" and settings.train_backend == "nemo" else ())
    values = {}
    for dotted in fields:
        value = settings
        for part in dotted.split("."):
            value = getattr(value, part)
        values[dotted] = value.model_dump(mode="json") if hasattr(value, "model_dump") else str(value)
    return values


def config_hash(settings: Settings, asset: str) -> str:
    """Hash of the settings an asset's output depends on: two runs with other values of them differ here."""
    return hashlib.sha256(json.dumps(settings_read(settings, asset), sort_keys=True).encode()).hexdigest()[:12]


def code_version(asset: str, settings: Settings, *modules: ModuleType) -> str:
    """The asset's version: its code and the settings it reads. A change to either makes exactly it stale."""
    return f"{source_hash(*modules)}-{config_hash(settings, asset)}"


def stamp(settings: Settings, asset: str) -> Stamp:
    """The marker an asset writes with its artifact: written by the asset, with these settings."""
    return Stamp(asset, config_hash(settings, asset))


def manifest_metadata(settings: Settings, asset: str) -> dict:
    """Git state, the config hash and the settings behind it, package versions: what made this materialization."""
    state = git_state()
    manifest = {
        **state,
        "config_hash": config_hash(settings, asset),
        "settings": settings_read(settings, asset),
        "packages": package_versions(),
    }
    return {
        "git_commit": manifest["git_commit"],
        "git_dirty": dg.MetadataValue.bool(bool(manifest["git_dirty"])),
        "config_hash": manifest["config_hash"],
        "run_manifest": dg.MetadataValue.json(manifest),
    }


# A date (or a range of them) filling a Markdown table cell: the web UI squeezes wide tables and would break it
# at a hyphen ("2012-" over "09"); non-breaking hyphens keep it on one line.
_TABLE_DATE = re.compile(r"(?<=\| )\d{4}-\d{2}(?:-\d{2})?(?:\.\.\d{4}-\d{2}(?:-\d{2})?)?(?= \|)")
NON_BREAKING_HYPHEN = "\u2011"


def unbroken_dates(markdown: str) -> str:
    return _TABLE_DATE.sub(lambda match: match.group().replace("-", NON_BREAKING_HYPHEN), markdown)


def rounded(value):
    """Floats to 3 significant digits, inside JSON blocks too; dates in Markdown tables kept whole; counts, text
    and the rest as they are."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return round_significant(value)
    if isinstance(value, dg.FloatMetadataValue):
        return dg.MetadataValue.float(round_significant(value.value)) if value.value is not None else value
    if isinstance(value, dg.JsonMetadataValue):
        return dg.MetadataValue.json(rounded(value.data))
    if isinstance(value, dg.MarkdownMetadataValue) and value.value is not None:
        return dg.MetadataValue.md(unbroken_dates(value.value))
    if isinstance(value, dg.MetadataValue):  # paths, Markdown, text: as they are (some are tuples inside)
        return value
    if isinstance(value, Mapping):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item) for item in value]
    return value


def for_people(figures: Mapping[str, object]) -> dict:
    """What every asset's figures pass through before they become metadata: floats to 3 significant digits, dates
    in tables that do not wrap, and a JSON block without the figures already shown above it."""
    shown = {name: rounded(value) for name, value in figures.items()}
    scalars = {name: value for name, value in shown.items() if isinstance(value, (bool, int, float, str))}
    for name, value in shown.items():
        if isinstance(value, dg.JsonMetadataValue) and isinstance(value.data, dict):
            shown[name] = dg.MetadataValue.json(
                {k: v for k, v in value.data.items() if k not in scalars or scalars[k] != v}
            )
    return shown


def asset_metadata(settings: Settings, asset: str, figures: Mapping[str, object]) -> dict:
    """An asset's materialization metadata: its figures for people, then the run manifest (exact, not rounded)."""
    return {**for_people(figures), **manifest_metadata(settings, asset)}


def partition_metadata(context: dg.AssetExecutionContext, partition: str, figures: Mapping[str, object]) -> None:
    """Figures of one partition of a run over several, on that partition's own materialization."""
    context.add_asset_metadata(for_people(figures), partition_key=partition)


def report_summary(context: dg.AssetExecutionContext, asset: str, text: str) -> None:
    """The asset's key figures in one line: in the run's log, and at the end of the line `sftc run` prints for it."""
    context.log.info(f"{asset}: {text}", extra={SUMMARY_EXTRA: text})


def image_markdown(png_path: Path, alt: str) -> dg.MetadataValue:
    """A PNG inlined in Markdown metadata, so the web UI shows the picture itself."""
    data = base64.b64encode(Path(png_path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")
