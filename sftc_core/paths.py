"""Where every artifact lives under the data directory (one place, so assets, the command line and tests agree)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The PEFT adapter (adapter_config.json, adapter_model.safetensors) beside a merged fine-tune: sft_model/adapter/.
ADAPTER_DIR = "adapter"


def month_dir(root: Path | str, month: str) -> Path:
    """`root/YYYY/MM` for `month` written YYYY-MM: how a tree of theses is laid out by month."""
    year, mm = month.split("-")
    return Path(root) / year / mm


@dataclass(frozen=True)
class ArtifactPaths:
    root: Path

    @property
    def raw_xml(self) -> Path:
        return self.root / "raw_xml"

    def raw_xml_month(self, month: str) -> Path:
        """`month` is YYYY-MM; files live under raw_xml/YYYY/MM/."""
        return month_dir(self.raw_xml, month)

    @property
    def jsonl(self) -> Path:
        return self.root / "jsonl"

    def jsonl_month(self, month: str) -> Path:
        return self.jsonl / f"{month}.jsonl"

    def rejects_month(self, month: str) -> Path:
        return self.jsonl / f"{month}.rejects.jsonl"

    @property
    def hf_splits(self) -> Path:
        return self.root / "hf_splits"

    @property
    def nemo_jsonl(self) -> Path:
        return self.root / "nemo_jsonl"

    @property
    def base_checkpoint(self) -> Path:
        return self.root / "checkpoints" / "base_fp8"

    @property
    def bf16_checkpoint(self) -> Path:
        return self.root / "checkpoints" / "bf16"

    @property
    def nemo_model(self) -> Path:
        return self.root / "checkpoints" / "nemo"

    @property
    def sft_model(self) -> Path:
        return self.root / "models" / "sft"

    @property
    def launch(self) -> Path:
        """Launched jobs: one folder each (sbatch script or manifest, logs, Pipes messages),
        on the shared filesystem."""
        return self.root / "launch"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def eval_month(self, month: str) -> Path:
        return self.eval_dir / f"{month}.csv"

    @property
    def eval_staging_dir(self) -> Path:
        return self.eval_dir / ".staging"

    def eval_staging(self, month: str) -> Path:
        """The month's answers so far, while its CSV is not written (resumable evaluation)."""
        return self.eval_staging_dir / f"{month}.jsonl"

    @property
    def server_logs(self) -> Path:
        """Logs of the servers a run starts (transformers serve, vLLM, SGLang), one file per server."""
        return self.root / "logs" / "servers"

    @property
    def prices(self) -> Path:
        return self.root / "prices"

    @property
    def backtest(self) -> Path:
        return self.root / "backtest"

    @property
    def reports(self) -> Path:
        return self.root / "reports"
