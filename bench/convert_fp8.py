"""CPU FP8 -> BF16 conversion against the bare minimum, on the same ~0.5 GB of shards in one run.

Writes an FP8 checkpoint with DeepSeek-V3's tensor shapes (experts 2048 x 7168, MLA projections, a
dense MLP, bf16 norms and an embedding slice; some scales stored in another shard than their weight)
into a temp dir, then, alternating, best of --repeats:
- bare: per shard, `safetensors.torch.load_file`, every tensor but the scales cast to bf16 (no scale
  applied), `save_file`: the least any converter does;
- ours: `convert_fp8_checkpoint(device="cpu")` (validation, block scales, streaming writes, SHA-256,
  fsync, resumable staging, index and config).
Prints ours / bare for wall time and CPU time (goal <= 1.3), and, each measured in a fresh child
process, peak RSS against 3 x the largest shard + 600 MiB (goal <= 1.0).

    .venv/bin/python bench/convert_fp8.py [--size-mb 450] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from record import Measurement, add_results_option, record
from safetensors.torch import load_file, save_file

from sftc_assets.checkpoints.convert import convert_fp8_checkpoint
from sftc_assets.checkpoints.fp8 import SCALE_SUFFIX, scale_grid

HIDDEN, MOE, Q_RANK, KV_RANK, HEADS = 7168, 2048, 1536, 512, 32  # DeepSeek-V3's, with a quarter of the heads
MIB = 1 << 20


def layer_tensors(layer: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One DeepSeek-V3 layer's worth of tensors (~145 MB), with 2 routed experts instead of 256 to stay small."""
    shapes = {
        "self_attn.q_a_proj": (Q_RANK, HIDDEN),
        "self_attn.q_b_proj": (HEADS * 192, Q_RANK),
        "self_attn.kv_a_proj_with_mqa": (KV_RANK + 64, HIDDEN),  # 576 rows: not a multiple of 128
        "self_attn.kv_b_proj": (HEADS * 256, KV_RANK),
        "self_attn.o_proj": (HIDDEN, HEADS * 128),
        **{
            f"mlp.experts.{e}.{p}": s
            for e in range(2)
            for p, s in (("gate_proj", (MOE, HIDDEN)), ("up_proj", (MOE, HIDDEN)), ("down_proj", (HIDDEN, MOE)))
        },
    }
    out: dict[str, torch.Tensor] = {}
    for suffix, shape in shapes.items():
        name = f"model.layers.{layer}.{suffix}.weight"
        out[name] = torch.randint(0, 0x7E, shape, generator=generator, dtype=torch.uint8).view(torch.float8_e4m3fn)
        out[name + SCALE_SUFFIX] = torch.rand(scale_grid(shape), generator=generator) * 1e-3
    for norm in ("input_layernorm", "post_attention_layernorm"):
        out[f"model.layers.{layer}.{norm}.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
    out[f"model.layers.{layer}.mlp.gate.e_score_correction_bias"] = torch.zeros(256)
    return out


def write_source(root: Path, size_mb: int) -> tuple[Path, int]:
    """Shards of about a layer each until size_mb; the last scale of each shard moves to the next one."""
    generator = torch.Generator().manual_seed(0)
    source = root / "fp8"
    source.mkdir()
    shards: list[dict[str, torch.Tensor]] = [
        {"model.embed_tokens.weight": torch.randn(4096, HIDDEN, generator=generator).to(torch.bfloat16)}
    ]
    total = shards[0]["model.embed_tokens.weight"].nbytes
    layer = 0
    while total < size_mb * 1e6:
        tensors = layer_tensors(layer, generator)
        total += sum(t.nbytes for t in tensors.values())
        shards.append(tensors)
        layer += 1
    for this, following in zip(shards[1:], shards[2:]):  # a scale stored apart from its weight
        moved = next(n for n in reversed(list(this)) if n.endswith(SCALE_SUFFIX))
        following[moved] = this.pop(moved)
    weight_map = {}
    for number, tensors in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, source / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    (source / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    (source / "config.json").write_text(
        json.dumps({"model_type": "deepseek_v3", "quantization_config": {"quant_method": "fp8"}})
    )
    return source, max(p.stat().st_size for p in source.glob("*.safetensors"))


def bare(source: Path, output: Path) -> None:
    output.mkdir()
    for shard in sorted(source.glob("*.safetensors")):
        tensors = load_file(shard)
        save_file(
            {n: t.to(torch.bfloat16) for n, t in tensors.items() if not n.endswith(SCALE_SUFFIX)}, output / shard.name
        )


def ours(source: Path, output: Path) -> None:
    convert_fp8_checkpoint(source, output, device="cpu", progress=False)


METHODS = {"bare": bare, "ours": ours}


def timed(method: str, source: Path, output: Path) -> tuple[float, float]:
    shutil.rmtree(output, ignore_errors=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    METHODS[method](source, output)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    shutil.rmtree(output)
    return wall, cpu


def peak_rss_self() -> int:
    """VmHWM of this process: unlike ru_maxrss, it does not inherit the parent's high-water mark across fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def peak_rss_child(method: str, source: Path, output: Path) -> int:
    """Peak RSS (bytes) of a fresh process that runs one conversion (imports included)."""
    shutil.rmtree(output, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, __file__, "--child", method, str(source), str(output)],
        capture_output=True,
        text=True,
        check=True,
    )
    shutil.rmtree(output)
    return int(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size-mb", type=int, default=450, help="FP8 bytes to generate, in MB (450: ~0.5 GB of shards)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    add_results_option(parser)
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "SOURCE", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, source, output = args.child
        METHODS[method](Path(source), Path(output))
        print(peak_rss_self())
        return

    with tempfile.TemporaryDirectory(prefix="sftc-bench-convert-") as tmp:
        root = Path(tmp)
        source, largest = write_source(root, args.size_mb)
        size = sum(p.stat().st_size for p in source.glob("*.safetensors"))
        shards = len(list(source.glob("*.safetensors")))
        print(
            f"source: {size / 1e9:.2f} GB in {shards} shards (largest {largest / MIB:.0f} MiB), "
            f"torch threads {torch.get_num_threads()}"
        )
        best = {m: (float("inf"), float("inf")) for m in METHODS}
        for _ in range(args.repeats):
            for method in METHODS:
                wall, cpu = timed(method, source, root / method)
                best[method] = (min(best[method][0], wall), min(best[method][1], cpu))
        for method, (wall, cpu) in best.items():
            print(f"{method:>5}: wall {wall:6.2f} s ({size / wall / 1e9:.2f} GB/s in), cpu {cpu:6.2f} s")
        print(
            f"ratio ours / bare: wall {best['ours'][0] / best['bare'][0]:.2f}x, "
            f"cpu {best['ours'][1] / best['bare'][1]:.2f}x (goal <= 1.3)"
        )

        budget = 3 * largest + 600 * MIB
        rss = {}
        for method in METHODS:
            rss[method] = peak_rss_child(method, source, root / method)
            print(
                f"{method:>5}: peak RSS {rss[method] / MIB:.0f} MiB = {rss[method] / budget:.2f} x "
                f"(3 x largest shard + 600 MiB = {budget / MIB:.0f} MiB)"
            )
        print("goal for ours: <= 1.0. GPU figures (kernel GB/s vs a device copy): `sftc gpu-check` on a GPU node.")
        (ours_wall, ours_cpu), (bare_wall, bare_cpu) = best["ours"], best["bare"]
        record(
            "convert_fp8",
            [
                Measurement(
                    "convert_fp8_checkpoint wall time", ours_wall, "bare load, cast, save", bare_wall, "s", "<= 1.3"
                ),
                Measurement(
                    "convert_fp8_checkpoint CPU time", ours_cpu, "bare load, cast, save", bare_cpu, "s", "<= 1.3"
                ),
                Measurement(
                    "convert_fp8_checkpoint peak RSS",
                    rss["ours"] / MIB,
                    "3 x largest shard + 600 MiB",
                    budget / MIB,
                    "MiB",
                    "<= 1.0",
                ),
            ],
            args.results,
        )


if __name__ == "__main__":
    main()
