"""`sftc bundle`: one archive of what a reviewer or the GPU team needs, and nothing they must not get.

In it: the validation and GPU check reports (with the check's step logs and results), the backtest report and the
eval CSVs, the fine-tune's record (metrics, loss CSVs and curve, validation generations: no weights), every config
file, the effective settings (the API keys only said to be set or not), the artifacts' markers (what wrote each
artifact, its settings hash and each file's SHA-256: the checkpoints are named by their hashes, not shipped), the
run manifests of the Dagster instance where there is one, and the bench CSVs. Never a checkpoint or weights file,
never `.env`; a file holding the value of an API key is left out and named in the manifest. `MANIFEST.json` lists
every member with its size and SHA-256 (and what was left out or missing, and why); `SHA256SUMS` is the same for
`sha256sum -c`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from sftc_core.artifacts import is_marker, marker_path, read_marker
from sftc_core.configs import PROJECT_ROOT
from sftc_core.io import BeforeSwap, atomic_path
from sftc_core.settings import Settings

BENCH_RESULTS = PROJECT_ROOT / "bench" / "results"
FORMATS = {".tar.gz": "tar", ".tgz": "tar", ".zip": "zip"}
# Weights and checkpoints never travel in a bundle, whatever directory they turn up in.
NEVER_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".distcp", ".nemo", ".gguf", ".npy", ".npz")
FIT_SUFFIXES = (".json", ".md", ".html", ".png", ".csv", ".jsonl", ".yaml", ".yml", ".log", ".txt")
SECRET_FIELDS = {"eodhd_api_key": "EODHD_API_KEY", "eval_api_key": "SFTC_EVAL_API_KEY"}


@dataclass
class Contents:
    """What goes in: (file on disk, name in the archive), generated members (name -> bytes), and what is not there."""

    files: list[tuple[Path, str]] = field(default_factory=list)
    generated: dict[str, bytes] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def add_tree(self, root: Path, prefix: str, why_missing: str, pattern: str = "*") -> None:
        root = Path(root)
        found = sorted(p for p in root.glob(pattern) if p.is_file()) if root.is_dir() else []
        found = [
            p for p in found if not is_marker(p) and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ]
        if not found:
            self.missing.append(f"{prefix}: {why_missing}")
        self.files += [(path, f"{prefix}/{path.relative_to(root).as_posix()}") for path in found]


def format_of(out: Path) -> str:
    for suffix, kind in FORMATS.items():
        if out.name.endswith(suffix):
            return kind
    raise ValueError(f"--out {out}: expected a file name ending in {', '.join(FORMATS)}")


def effective_settings(settings: Settings) -> dict:
    """The settings as loaded (environment, .env, profile, every config), each API key only said to be set or not."""
    values = settings.model_dump(mode="json", exclude=set(SECRET_FIELDS))
    values.update(
        {name: "set (not shown)" if getattr(settings, name) is not None else "not set" for name in SECRET_FIELDS}
    )
    return values


def artifact_markers(settings: Settings) -> list[dict]:
    """Each artifact of the chain on disk: what wrote it, with which settings, its content hash and
    each file's SHA-256."""
    from sftc_assets.reports.validation import CHAIN_STAGES, GPU_ONLY_STAGES

    rows = []
    for asset in (*CHAIN_STAGES, *GPU_ONLY_STAGES, "validation_report"):
        partitions = (
            settings.thesis_months
            if asset in ("raw_xml", "thesis_jsonl")
            else settings.test_months
            if asset == "eval_csv"
            else [None]
        )
        for partition in partitions:
            for target in settings.artifacts_of(asset, partition):
                marker = read_marker(target) if target.exists() else None
                row = {"asset": asset, "partition": partition, "path": str(target), "exists": target.exists()}
                if marker is not None:
                    row.update(
                        writer=marker.writer,
                        config_hash=marker.config_hash,
                        content_hash=marker.content_hash,
                        files=marker.files,
                    )
                elif target.exists():
                    row["marker"] = f"none ({marker_path(target).name} missing): not written by sftc"
                rows.append(row)
    return rows


def collect(
    settings: Settings, bench_results: Path = BENCH_RESULTS, run_manifests: list[dict] | None = None
) -> Contents:
    paths = settings.paths
    contents = Contents()
    reports = paths.reports
    for name, why in (
        ("validation_report", "not materialized (make run)"),
        ("gpu_check", "not run (sftc gpu-check on a GPU node)"),
    ):
        for suffix in (".md", ".json"):
            if (reports / f"{name}{suffix}").is_file():
                contents.files.append((reports / f"{name}{suffix}", f"reports/{name}{suffix}"))
            else:
                contents.missing.append(f"reports/{name}{suffix}: {why}")
    work = settings.data_dir / "gpu_check"
    contents.add_tree(work / "logs", "gpu_check/logs", "no gpu-check step logs (sftc gpu-check)")
    contents.add_tree(work / "results", "gpu_check/results", "no gpu-check step results (sftc gpu-check)")
    contents.add_tree(paths.backtest, "backtest", "no backtest report (make run)")
    contents.add_tree(paths.eval_dir, "eval", "no eval CSVs (make run)", "*.csv")
    contents.add_tree(paths.sft_model, "models/sft", "no fine-tuned model (make run)", "*.*")
    contents.add_tree(settings.config_dir, "configs", "no configs", "**/*")
    contents.add_tree(bench_results, "bench/results", "no bench CSVs (make bench)", "*.csv")
    contents.generated["settings.json"] = _json(effective_settings(settings))
    contents.generated["artifacts.json"] = _json(artifact_markers(settings))
    if run_manifests is None:
        contents.missing.append("run_manifests.json: no Dagster instance at DAGSTER_HOME (make run writes one)")
    else:
        contents.generated["run_manifests.json"] = _json(run_manifests)
    return contents


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()


def _refusal(name: str, data: bytes, secrets: dict[str, str]) -> str | None:
    """Why `name` must stay out of the bundle: weights, a .env file, or an API key's value inside it."""
    base = name.rsplit("/", 1)[-1]
    if base == ".env" or base.startswith(".env."):
        return "an environment file (.env)"
    if base.endswith(NEVER_SUFFIXES) or not base.endswith(FIT_SUFFIXES):
        return "weights or a binary the bundle never carries"
    for variable, value in secrets.items():
        if value.encode() in data:
            return f"it contains the value of {variable}"
    return None


def write_bundle(out: Path, contents: Contents, settings: Settings, git: dict, stamp: BeforeSwap | None = None) -> dict:
    """Write the archive (atomically, with `stamp`'s marker); returns its manifest."""
    kind = format_of(out)
    secrets = {
        variable: secret.get_secret_value()
        for name, variable in SECRET_FIELDS.items()
        if (secret := getattr(settings, name)) is not None
    }
    members: dict[str, bytes] = {}
    left_out = []
    for path, name in contents.files:
        data = path.read_bytes()
        why = _refusal(name, data, secrets)
        if why:
            left_out.append({"path": name, "source": str(path), "reason": why})
        else:
            members[name] = data
    for name, data in contents.generated.items():
        why = _refusal(name, data, secrets)
        if why:
            left_out.append({"path": name, "reason": why})
        else:
            members[name] = data
    files = [
        {"path": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in sorted(members.items())
    ]
    manifest = {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "sftc_commit": git.get("git_commit", "unknown"),
        "git_dirty": git.get("git_dirty"),
        "profile": settings.profile_name,
        "data_dir": str(settings.data_dir),
        "files": files,
        "left_out": left_out,
        "missing": contents.missing,
    }
    sums = "".join(f"{f['sha256']}  {f['path']}\n" for f in files).encode()
    ordered = {"MANIFEST.json": _json(manifest), "SHA256SUMS": sums, **dict(sorted(members.items()))}
    with atomic_path(out, stamp) as tmp:
        if kind == "zip":
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for name, data in ordered.items():
                    archive.writestr(name, data)
        else:
            with tarfile.open(tmp, "w:gz") as archive:
                for name, data in ordered.items():
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), int(dt.datetime.now().timestamp()), 0o644
                    archive.addfile(info, io.BytesIO(data))
    return manifest
