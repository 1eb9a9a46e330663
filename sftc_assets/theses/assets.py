"""The thesis assets: `raw_xml` (the XML files of a month) and `thesis_jsonl` (that month's records and rejects)."""

import dagster as dg

from sftc_assets.theses import layout, parser, sample_corpus, schema
from sftc_core.io import read_jsonl
from sftc_core.paths import ArtifactPaths
from sftc_core.settings import Settings
from sftc_core.text import markdown_table
from sftc_resources.metadata import code_version, manifest_metadata
from sftc_resources.partitions import month_partitions
from sftc_resources.routing import asset_placement
from sftc_resources.writes import writing

GROUP = "data"
PREVIEW_RECORDS = 5
COUNTS_CHECK = "accepted_plus_rejected_equals_read"
SCHEMA_CHECK = "jsonl_schema"


def _check_results(month_reads: dict[str, int], paths: ArtifactPaths) -> list[dg.AssetCheckResult]:
    """Both checks re-read the files just written: line counts against the parse, and every line's schema."""
    count_rows, problems = [], []
    for month, read in month_reads.items():
        records, rejects = read_jsonl(paths.jsonl_month(month)), read_jsonl(paths.rejects_month(month))
        count_rows.append({"month": month, "read": read, "record_lines": len(records), "reject_lines": len(rejects)})
        problems += [f"{month}: {p}" for p in schema.month_problems(records, rejects, month)]
    mismatched = [r for r in count_rows if r["record_lines"] + r["reject_lines"] != r["read"]]
    return [
        dg.AssetCheckResult(
            check_name=COUNTS_CHECK,
            passed=not mismatched,
            metadata={"months_checked": len(count_rows), "mismatched_months": dg.MetadataValue.md(markdown_table(mismatched))},
        ),
        dg.AssetCheckResult(
            check_name=SCHEMA_CHECK,
            passed=not problems,
            metadata={"problems": len(problems), "first_problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems[:20]) or "_(none)_")},
        ),
    ]


def defs(settings: Settings) -> dg.Definitions:
    partitions = month_partitions(settings.thesis_months)

    @dg.asset(
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        code_version=code_version("raw_xml", settings, sample_corpus, layout),
        kinds={"xml"},
        description="Thesis XML files of a month under raw_xml/YYYY/MM/: generated from sample prices in the toy "
        "profile, observed (external files) in the full profile.",
        group_name=GROUP,
        **asset_placement("cpu", settings),
    )
    def raw_xml(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        paths = settings.paths
        corpus = settings.profile.corpus
        months = list(context.partition_keys)
        rows = []
        # Observed theses (the full profile) are the user's files: nothing is written, nothing locked.
        targets = [t for month in months for t in settings.artifacts_of("raw_xml", month)]
        with writing(settings, "raw_xml", targets) as stamp:
            for month in months:
                row = {"month": month}
                if corpus.source == "sample":  # the writer replaces exactly that month's directory, atomically
                    row["theses"] = sample_corpus.write_sample_corpus_month(paths.raw_xml, month, corpus, stamp)["theses"]
                rows.append({**row, **layout.observe_month(paths.raw_xml_month(month))})
        context.log.info("raw_xml %s: %s files (%s)", f"{months[0]}..{months[-1]}", sum(r["files"] for r in rows), corpus.source)
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(paths.raw_xml)),
                "source": corpus.source,
                "months": f"{months[0]}..{months[-1]}",
                "files": sum(r["files"] for r in rows),
                "bytes": sum(r["bytes"] for r in rows),
                **({"theses_written": sum(r["theses"] for r in rows)} if corpus.source == "sample" else {}),
                "per_month": dg.MetadataValue.md(markdown_table(rows)),
                **manifest_metadata(settings, "raw_xml"),
            }
        )

    @dg.asset(
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=["raw_xml"],
        code_version=code_version("thesis_jsonl", settings, parser, schema, layout),
        kinds={"json", "python"},
        check_specs=[
            dg.AssetCheckSpec(COUNTS_CHECK, asset="thesis_jsonl", blocking=True, description="every thesis read is one record line or one reject line"),
            dg.AssetCheckSpec(SCHEMA_CHECK, asset="thesis_jsonl", blocking=True, description="every line follows spec/thesis-xml.md; records sorted, ids unique"),
        ],
        description="Validated thesis records of a month (jsonl/YYYY-MM.jsonl) and its reject lines (YYYY-MM.rejects.jsonl), "
        "per spec/thesis-xml.md. Duplicates are judged against the whole raw_xml tree.",
        group_name=GROUP,
        **asset_placement("cpu", settings),
    )
    def thesis_jsonl(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        paths = settings.paths
        months = list(context.partition_keys)
        targets = [t for month in months for t in settings.artifacts_of("thesis_jsonl", month)]
        with writing(settings, "thesis_jsonl", targets, inputs=[("raw_xml", settings.thesis_months)]) as stamp:
            # The whole tree, so a thesis duplicating one of an earlier month is caught; only these months are written.
            corpus = parser.parse_corpus(paths.raw_xml)
            by_month = corpus.by_month()
            written = {m: by_month.get(m, parser.ParseResult()) for m in months}
            for month, result in written.items():
                parser.write_jsonl_outputs(result, paths.jsonl_month(month), paths.rejects_month(month), stamp)
        partition_months = set(settings.thesis_months)
        homeless = [o.reject or o.record for m, r in by_month.items() if m not in partition_months for o in r.outcomes]
        if homeless:
            context.log.warning(
                "%d theses are in no partition: their month (of the as_of_date, else of the YYYY/MM/ directory) is none "
                "or outside %s..%s; e.g. %s",
                len(homeless), min(partition_months), max(partition_months), sorted({row["source_file"] for row in homeless})[:5],
            )  # fmt: skip

        requested = corpus.for_months(months)
        counts, records = requested.counts(), requested.records
        context.log.info("%s..%s: %s", months[0], months[-1], parser.summary_line(requested, paths.jsonl))
        per_month = []
        for month, result in written.items():
            month_counts = result.counts()
            per_month.append({"month": month, **{k: month_counts[k] for k in ("files", "read", "accepted", "rejected")}})
        reasons = [{"reason": reason, "count": n} for reason, n in counts["reject_reasons"].items()]
        preview_columns = ["id", "ticker", "as_of_date", "action", "horizon_days", "confidence", "reasoning"]
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(paths.jsonl)),
                "months": f"{months[0]}..{months[-1]}",
                "files": counts["files"],
                "read": counts["read"],
                "accepted": counts["accepted"],
                "rejected": counts["rejected"],
                "dagster/row_count": counts["accepted"],
                "date_range": f"{records[0]['as_of_date']}..{records[-1]['as_of_date']}" if records else "none",
                "reject_reasons": dg.MetadataValue.md(markdown_table(reasons)),
                "unknown_elements": dg.MetadataValue.json(counts["unknown_elements"]),
                "per_month": dg.MetadataValue.md(markdown_table(per_month)),
                "corpus_read": len(corpus.outcomes),
                "not_in_any_partition": len(homeless),
                "preview": dg.MetadataValue.md(markdown_table(records[:PREVIEW_RECORDS], preview_columns)),
                **manifest_metadata(settings, "thesis_jsonl"),
            },
            check_results=_check_results({row["month"]: row["read"] for row in per_month}, paths),
        )

    return dg.Definitions(assets=[raw_xml, thesis_jsonl])
