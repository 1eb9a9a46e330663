"""What every asset's metadata passes through (sftc_platform/metadata.py): floats to 3 significant digits, inside
JSON blocks too, a JSON block without the figures already shown above it, the run manifest exact; and the one-line
summary that `sftc run` prints."""

from __future__ import annotations

import dagster as dg

from sftc_core.settings import load_settings
from sftc_core.text import markdown_table
from sftc_platform.metadata import NON_BREAKING_HYPHEN, asset_metadata, for_people, manifest_metadata, report_summary


def test_floats_are_rounded_everywhere_counts_and_text_are_not():
    shown = for_people(
        {
            "macro_f1": 0.1542028985507246,
            "rows": 1152,
            "ready": True,
            "months": "2012-09..2012-12",
            "loss": dg.MetadataValue.float(5.382357835769653),
            "path": dg.MetadataValue.path("/data/eval/2012-10.csv"),
            "table": dg.MetadataValue.md("| a |\n|---|\n| 0.1542028985507246 |"),
            "nested": dg.MetadataValue.json(
                {"by_month": {"2012-10": {"accuracy": 0.28906, "rows": 32}}, "curve": [0.123456, None]}
            ),
        }
    )
    assert (shown["macro_f1"], shown["rows"], shown["ready"], shown["months"]) == (
        0.154,
        1152,
        True,
        "2012-09..2012-12",
    )
    assert shown["loss"] == dg.MetadataValue.float(5.38)
    assert shown["path"] == dg.MetadataValue.path("/data/eval/2012-10.csv")
    assert shown["table"].value.endswith("| 0.1542028985507246 |")  # Markdown is text its writer formatted
    assert shown["nested"].data == {"by_month": {"2012-10": {"accuracy": 0.289, "rows": 32}}, "curve": [0.123, None]}


def test_dates_in_markdown_tables_do_not_wrap_other_text_keeps_its_hyphens():
    table = markdown_table(
        [{"month": "2012-09", "window": "2012-09-04..2012-09-28", "id": "aapl-2012-09-04", "return": "-6.6%"}]
    )
    shown = for_people({"per_month": dg.MetadataValue.md(table)})["per_month"].value
    nb = NON_BREAKING_HYPHEN
    assert f"| 2012{nb}09 | 2012{nb}09{nb}04..2012{nb}09{nb}28 | aapl-2012-09-04 | -6.6% |" in shown


def test_a_json_block_drops_what_the_figures_above_it_already_show():
    metrics = {
        "accuracy": 0.2890625,
        "parse_rate": 1.0,
        "steps": 300,
        "device": "cpu",
        "train_rows": 896,
        "initial_val_loss": 6.9437,
    }
    shown = for_people(
        {
            "accuracy": 0.2890625,
            "steps": 300,
            "device": "cpu",
            "initial_val_loss": 6.94,
            "metrics": dg.MetadataValue.json(metrics),
        }
    )
    # the same figure above (after rounding) is not repeated; what differs or is not shown stays
    assert shown["metrics"].data == {"parse_rate": 1.0, "train_rows": 896}


def test_the_manifest_stays_exact_after_the_figures():
    settings = load_settings(env={})
    metadata = asset_metadata(settings, "hf_splits", {"embargo_days": 5, "share": 0.123456})
    manifest = manifest_metadata(settings, "hf_splits")
    assert list(metadata)[:2] == ["embargo_days", "share"] and metadata["share"] == 0.123
    assert {name: metadata[name] for name in manifest} == manifest


def test_the_summary_line_goes_to_the_run_log():
    @dg.asset
    def counted(context) -> None:
        report_summary(context, "counted", "1,152 rows")

    with dg.instance_for_test() as instance:
        result = dg.materialize([counted], instance=instance)
        seen = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert "counted: 1,152 rows" in seen
