"""The latest row of every figure in bench/results/*.csv, one table: ratio against its goal, the run before it,
the figure and its baseline, when, on which commit and machine.

    .venv/bin/python bench/summary.py [--results DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from record import add_results_option, read_rows

from sftc_core.text import markdown_table


def latest_rows(results_dir: Path) -> list[dict]:
    """Per (bench, figure): the newest row, with the ratio of the row before it (same figure) as `previous`."""
    summary = []
    for path in sorted(Path(results_dir).glob("*.csv")):
        by_figure: dict[str, list[dict]] = {}
        for row in read_rows(path):
            by_figure.setdefault(row["figure"], []).append(row)
        for rows in by_figure.values():
            rows.sort(key=lambda row: row["date"])  # ISO dates in UTC sort as text
            summary.append({**rows[-1], "previous": rows[-2]["ratio"] if len(rows) > 1 else ""})
    return summary


def summary_table(rows: list[dict]) -> str:
    verdict = {"true": "ok", "false": "MISSES GOAL", "": ""}
    table = [
        {
            "bench": row["bench"],
            "figure": row["figure"],
            "ratio": row["ratio"],
            "goal": row["goal"] or "-",
            "": verdict.get(row["meets_goal"], row["meets_goal"]),
            "previous": row["previous"] or "-",
            "value": f"{row['value']} {row['unit']}",
            "baseline": f"{row['baseline']} {row['baseline_value']}",
            "date": row["date"],
            "commit": row["commit"],
            "machine": row["machine"],
        }
        for row in rows
    ]
    return markdown_table(table, max_cell=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_results_option(parser)
    args = parser.parse_args()
    rows = latest_rows(args.results)
    if not rows:
        print(f"no bench results in {args.results} yet: run make bench")
        return
    print(summary_table(rows))
    missed = [f"{row['bench']}: {row['figure']}" for row in rows if row["meets_goal"] == "false"]
    if missed:
        print(f"\n{len(missed)} figure(s) miss their goal: " + "; ".join(missed))


if __name__ == "__main__":
    main()
