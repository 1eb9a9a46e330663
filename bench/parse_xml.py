"""Throughput of `parse_corpus` against a bare lxml parse of the same files, side by side in one process.

Writes ~20k thesis files (both shapes, a few rejects) into a temp dir, then times, in turn:
- bare: `etree.parse(path)` of every file (paths listed beforehand): lxml reads the file itself;
- bare from bytes: our capped read of every file, then `etree.fromstring` with lxml's default parser
  (for reference: our read path is cheaper than libxml2's own file reading);
- floor: what any validator in Python pays at least: our read-ahead, then the hardened parse of
  each batch, then a visit of every element's tag and text, batched as `parse_corpus` does (no checks);
- ours: `parse_corpus` over the same tree (discovery, hardened parse, validation, duplicates).
Every side reads the files from disk (page cache warm) in every round. Times are CPU seconds of this
process, best of --repeats rounds, each round running every side once in turn after a full garbage
collection (so no side pays for another's garbage). Prints bare_time / our_time (our throughput
relative to bare lxml; goal >= 0.7).

    .venv/bin/python bench/parse_xml.py [--files 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import random
import tempfile
import time
from pathlib import Path

from lxml import etree
from record import Measurement, add_results_option, record

from sftc_assets.theses import parser
from sftc_assets.theses.parser import parse_corpus

TICKERS = ["AAPL", "MSFT", "IBM", "GOOG", "BRK.B", "AMZN", "NVDA", "META", "JPM", "XOM"]
ACTIONS = ["strong buy", "BUY", "hold", "Sell", "STRONG-SELL"]


def thesis_xml(rng: random.Random, ticker: str, day: dt.date) -> str:
    points = "".join(
        f"<point>Point {i}: trailing return {rng.uniform(-9, 9):.2f}% over {i * 5} sessions</point>"
        for i in range(1, 5)
    )
    return (
        f"<thesis><ticker>{ticker}</ticker><as_of_date>{day.isoformat()}</as_of_date>"
        f"<reasoning>Momentum over 20 sessions is {rng.uniform(-9, 9):.2f}% while volatility sits at "
        f"{rng.uniform(10, 40):.1f}%; price is {rng.uniform(-5, 5):.1f}% from its 50-day average.</reasoning>"
        f"<support>{points}</support><action>{rng.choice(ACTIONS)}</action>"
        f"<horizon_days>5</horizon_days><confidence>{rng.random():.2f}</confidence></thesis>"
    )


def write_corpus(root: Path, n_files: int, seed: int = 0) -> int:
    """`n_files` files under root/YYYY/MM/: 4 in 5 hold one <thesis>, the rest a <theses> of 3."""
    rng = random.Random(seed)
    day, theses = dt.date(2010, 1, 1), 0
    for i in range(n_files):
        count = 1 if i % 5 else 3
        items = []
        for _ in range(count):
            day += dt.timedelta(days=1) if i % 7 == 0 else dt.timedelta(0)
            items.append(thesis_xml(rng, TICKERS[theses % len(TICKERS)], day))
            theses += 1
        body = items[0] if count == 1 else "<theses>" + "".join(items) + "</theses>"
        if i % 100 == 99:
            body = body.replace("</ticker>", "</tick>", 1)  # a malformed file now and then
        month_dir = root / f"{day:%Y}" / f"{day:%m}"
        month_dir.mkdir(parents=True, exist_ok=True)
        (month_dir / f"t{i:06d}.xml").write_text('<?xml version="1.0" encoding="UTF-8"?>\n' + body, encoding="utf-8")
    return theses


def bare_parse(paths: list[str]) -> None:
    for path in paths:
        try:
            etree.parse(path)
        except etree.XMLSyntaxError:
            pass


def bare_parse_from_bytes(paths: list[str]) -> None:
    for path in paths:
        try:
            etree.fromstring(parser._read_capped(path, parser.MAX_FILE_BYTES))
        except etree.XMLSyntaxError:
            pass


def floor_parse(root: Path, files: list[str]) -> None:
    hardened = parser._hardened_parser()
    for batch in parser._read_ahead(os.path.join(root, ""), files, parser.MAX_FILE_BYTES):
        tree_roots = []
        for _, data in batch:
            try:
                tree_roots.append(etree.fromstring(data, hardened))
            except etree.XMLSyntaxError:
                pass
        for tree_root in tree_roots:
            for elem in tree_root.iter():
                _ = elem.tag, elem.text  # read each element's tag and text, as the parser does


def best_cpu_times(works: dict, repeats: int) -> dict[str, float]:
    """Each piece of work once per round, in turn, so all see the same machine; best round of each."""
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            gc.collect()
            start = time.process_time()
            work()
            times[name].append(time.process_time() - start)
    return {name: min(seconds) for name, seconds in times.items()}


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--files", type=int, default=20_000)
    args.add_argument("--repeats", type=int, default=5)
    add_results_option(args)
    opts = args.parse_args()
    with tempfile.TemporaryDirectory(prefix="sftc-bench-") as tmp:
        root = Path(tmp)
        theses = write_corpus(root, opts.files)
        paths = sorted(str(p) for p in root.rglob("*.xml"))
        files = [os.path.relpath(path, root) for path in paths]
        times = best_cpu_times(
            {
                "bare lxml parse": lambda: bare_parse(paths),
                "bare lxml from bytes": lambda: bare_parse_from_bytes(paths),
                "floor (read, parse, visit)": lambda: floor_parse(root, files),
                "parse_corpus": lambda: parse_corpus(root),
            },
            opts.repeats,
        )
        counts = parse_corpus(root).counts()
        print(f"{len(paths)} files, {theses} theses: {counts['accepted']} accepted, {counts['rejected']} rejected")
        for name, seconds in times.items():
            print(
                f"{name:28s} {seconds:6.3f} s CPU  {len(paths) / seconds:8,.0f} files/s  "
                f"{seconds / len(paths) * 1e6:5.1f} us/file"
            )
        bare, bare_bytes, floor, ours = times.values()
        print(
            f"throughput ratio (bare_time / our_time): {bare / ours:.2f}x (goal >= 0.7x); "
            f"bare_from_bytes_time / our_time: {bare_bytes / ours:.2f}x; floor_time / our_time: {floor / ours:.2f}x"
        )
        rate = len(paths) / ours
        record(
            "parse_xml",
            [
                Measurement(
                    "parse_corpus throughput", rate, "bare lxml parse", len(paths) / bare, "files/s (CPU)", ">= 0.7"
                ),
                Measurement(
                    "parse_corpus vs the floor",
                    rate,
                    "read, hardened parse, visit",
                    len(paths) / floor,
                    "files/s (CPU)",
                ),
                Measurement(
                    "parse_corpus vs lxml from bytes",
                    rate,
                    "bare lxml from bytes",
                    len(paths) / bare_bytes,
                    "files/s (CPU)",
                ),
            ],
            opts.results,
        )


if __name__ == "__main__":
    main()
