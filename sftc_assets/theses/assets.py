"""The thesis assets: `raw_xml` (the XML files of a month) and `thesis_jsonl` (that month's records and rejects)."""

import dagster as dg

from sftc_assets.theses import layout, parser, sample_corpus, schema
from sftc_core.io import read_jsonl
from sftc_core.paths import ArtifactPaths
from sftc_core.progress import Tracker
from sftc_core.settings import Settings
from sftc_core.text import format_number, markdown_table
from sftc_platform.metadata import asset_metadata, code_version, partition_metadata, report_summary
from sftc_platform.partitions import month_partitions
from sftc_platform.routing import asset_placement
from sftc_platform.writes import writing

GROUP = "theses"
PREVIEW_RECORDS = 5
COUNTS_CHECK = "accepted_plus_rejected_equals_read"
SCHEMA_CHECK = "jsonl_schema"


def check_thesis_jsonl(
    month_reads: dict[str, int], paths: ArtifactPaths
) -> tuple[list[dg.AssetCheckResult], dict[str, dict]]:
    """Both checks of thesis_jsonl re-read the files just written: line counts against the parse, and every line's
    schema. Also each month's outcome, for its partition's metadata."""
    count_rows, problems, by_month = [], [], {}
    for month, read in month_reads.items():
        records, rejects = read_jsonl(paths.jsonl_month(month)), read_jsonl(paths.rejects_month(month))
        row = {"month": month, "read": read, "record_lines": len(records), "reject_lines": len(rejects)}
        count_rows.append(row)
        month_problems = schema.month_problems(records, rejects, month)
        problems += [f"{month}: {p}" for p in month_problems]
        counted = row["record_lines"] + row["reject_lines"] == read
        by_month[month] = {
            f"check {COUNTS_CHECK}": "passed"
            if counted
            else f"FAILED: {row['record_lines']} + {row['reject_lines']} lines for {read} read",
            f"check {SCHEMA_CHECK}": "passed"
            if not month_problems
            else f"FAILED: {len(month_problems)} problems, e.g. {month_problems[0]}",
        }
    mismatched = [r for r in count_rows if r["record_lines"] + r["reject_lines"] != r["read"]]
    checks = [
        dg.AssetCheckResult(
            check_name=COUNTS_CHECK,
            passed=not mismatched,
            metadata={
                "months_checked": len(count_rows),
                "mismatched_months": dg.MetadataValue.md(markdown_table(mismatched)),
            },
        ),
        dg.AssetCheckResult(
            check_name=SCHEMA_CHECK,
            passed=not problems,
            metadata={
                "problems": len(problems),
                "first_problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems[:20]) or "_(none)_"),
            },
        ),
    ]
    return checks, by_month


def _span(months: list[str]) -> str:
    return months[0] if len(months) == 1 else f"{months[0]}..{months[-1]}"


def materialize_raw_xml(context: dg.AssetExecutionContext, settings: Settings) -> dg.MaterializeResult:
    paths = settings.paths
    corpus = settings.profile.corpus
    months = list(context.partition_keys)
    rows = []
    # Observed theses (the full profile) are the user's files: nothing is written, nothing locked.
    targets = [t for month in months for t in settings.artifacts_of("raw_xml", month)]
    task = "raw_xml: writing theses" if corpus.source == "sample" else "raw_xml: looking at the files"
    with (
        writing(settings, "raw_xml", targets) as stamp,
        Tracker(task, len(months), "month", log=context.log.info) as progress,
    ):
        for month in months:
            row = {"month": month}
            if corpus.source == "sample":  # the writer replaces exactly that month's directory, atomically
                sample = sample_corpus.write_sample_corpus_month(paths.raw_xml, month, corpus, stamp)
                row["theses_written"] = sample["theses"]
            rows.append({**row, **layout.observe_month(paths.raw_xml_month(month))})
            progress.advance()
    for row in rows:
        path = dg.MetadataValue.path(str(paths.raw_xml_month(row["month"])))
        partition_metadata(context, row["month"], {"path": path, **{k: v for k, v in row.items() if k != "month"}})
    files = sum(r["files"] for r in rows)
    if corpus.source == "sample":
        written = f", {format_number(sum(r['theses_written'] for r in rows))} theses written"
    else:
        written = " (observed)"
    report_summary(context, "raw_xml", f"{format_number(files)} files{written}")
    return dg.MaterializeResult(metadata=asset_metadata(settings, "raw_xml", {"source": corpus.source}))


def materialize_thesis_jsonl(context: dg.AssetExecutionContext, settings: Settings) -> dg.MaterializeResult:
    paths = settings.paths
    months = list(context.partition_keys)
    targets = [t for month in months for t in settings.artifacts_of("thesis_jsonl", month)]
    with writing(settings, "thesis_jsonl", targets, inputs=[("raw_xml", settings.thesis_months)]) as stamp:
        # The whole tree, so a thesis duplicating one of an earlier month is caught; only these months are written.
        corpus = parser.parse_corpus(paths.raw_xml, progress_log=context.log.info)
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
            len(homeless),
            min(partition_months),
            max(partition_months),
            sorted({row["source_file"] for row in homeless})[:5],
        )

    checks, check_outcomes = check_thesis_jsonl({m: r.counts()["read"] for m, r in written.items()}, paths)
    preview_columns = ["id", "ticker", "as_of_date", "action", "horizon_days", "confidence", "reasoning"]
    for month, result in written.items():
        counts, records = result.counts(), result.records
        reasons = [{"reason": reason, "count": n} for reason, n in counts["reject_reasons"].items()]
        partition_metadata(
            context,
            month,
            {
                "path": dg.MetadataValue.path(str(paths.jsonl_month(month))),
                "rejects_path": dg.MetadataValue.path(str(paths.rejects_month(month))),
                **{k: counts[k] for k in ("files", "read", "accepted", "rejected")},
                "dagster/row_count": counts["accepted"],
                "date_range": f"{records[0]['as_of_date']}..{records[-1]['as_of_date']}" if records else "none",
                "reject_reasons": dg.MetadataValue.md(markdown_table(reasons)),
                "unknown_elements": dg.MetadataValue.json(counts["unknown_elements"]),
                "preview": dg.MetadataValue.md(markdown_table(records[:PREVIEW_RECORDS], preview_columns)),
                **check_outcomes[month],
            },
        )
    requested = corpus.for_months(months)
    context.log.info("%s: %s", _span(months), parser.summary_line(requested, paths.jsonl))
    counts = requested.counts()
    accepted, rejected, read = (format_number(counts[k]) for k in ("accepted", "rejected", "read"))
    report_summary(context, "thesis_jsonl", f"{accepted} accepted, {rejected} rejected of {read} read")
    return dg.MaterializeResult(
        # Figures of the whole tree the parse read, true of every partition it wrote.
        metadata=asset_metadata(
            settings, "thesis_jsonl", {"corpus_read": len(corpus.outcomes), "not_in_any_partition": len(homeless)}
        ),
        check_results=checks,
    )


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
        return materialize_raw_xml(context, settings)

    @dg.asset(
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=["raw_xml"],
        code_version=code_version("thesis_jsonl", settings, parser, schema, layout),
        kinds={"json", "python"},
        check_specs=[
            dg.AssetCheckSpec(
                COUNTS_CHECK,
                asset="thesis_jsonl",
                blocking=True,
                description="every thesis read is one record line or one reject line",
            ),
            dg.AssetCheckSpec(
                SCHEMA_CHECK,
                asset="thesis_jsonl",
                blocking=True,
                description="every line follows docs/thesis-xml.md; records sorted, ids unique",
            ),
        ],
        description="Validated thesis records of a month (jsonl/YYYY-MM.jsonl) and its reject lines "
        "(YYYY-MM.rejects.jsonl), per docs/thesis-xml.md. Duplicates are judged against the whole raw_xml tree.",
        group_name=GROUP,
        **asset_placement("cpu", settings),
    )
    def thesis_jsonl(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return materialize_thesis_jsonl(context, settings)

    return dg.Definitions(assets=[raw_xml, thesis_jsonl])
