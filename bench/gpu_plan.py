"""The GPU plan's cost against the floor of reading the same NeMo JSONL, measured side by side in one process.

The plan runs in every validation report and every `gpu_preflight`, so it must stay cheap next to the chain. Its
work beyond reading the data (the architecture, the layout, the memory estimate per stage, the data lengths by the
byte bound, the tags) is timed as `build_gpu_plan` (NeMo's import probe off: that is one subprocess, cached per
process) against `read_pairs` of the training and validation files it measures. The goal is plan / read <= 3x.
Usage: python bench/gpu_plan.py [--lines N] [--repeats N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from config_helpers import write_nemo_data  # noqa: E402 (the export's shape, shared with the tests)
from record import Measurement, add_results_option, record  # noqa: E402

from sftc_assets.training.gpu_plan import build_gpu_plan  # noqa: E402
from sftc_core.nemo_format import NEMO_FILES, read_pairs  # noqa: E402
from sftc_core.settings import load_settings  # noqa: E402

GOAL = 3.0


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lines", type=int, default=20_000, help="lines per NeMo JSONL file (the toy chain writes ~1,000)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    add_results_option(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        settings = load_settings(env={"SFTC_DATA_DIR": str(data)}, dotenv_path=Path(tmp) / "none")
        write_nemo_data(data / "nemo_jsonl", settings.sft, lines=args.lines)
        files = [data / "nemo_jsonl" / NEMO_FILES[split] for split in ("train", "validation")]
        read = best_of(args.repeats, lambda: [read_pairs(path) for path in files])
        plan = best_of(args.repeats, lambda: build_gpu_plan(settings, check_nemo=False))
    ratio = plan / read
    print(
        f"GPU plan over 2 x {args.lines:,} NeMo lines: {plan * 1000:.0f} ms; reading them: {read * 1000:.0f} ms; "
        f"plan / read = {ratio:.2f}x (goal <= {GOAL:g}x) {'OK' if ratio <= GOAL else 'OVER'}"
    )
    record(
        "gpu_plan",
        [Measurement("build_gpu_plan time", plan, "read_pairs of the same files", read, "s", f"<= {GOAL:g}")],
        args.results,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
