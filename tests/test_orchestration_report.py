"""The validation report's verdicts and files, from stage outcomes and GPU-plan checks alone (no Dagster)."""

from __future__ import annotations

import datetime as dt
import json

from sftc_assets.reports.validation import (
    FAIL,
    NOT_RUN,
    PASS,
    CheckOutcome,
    StageOutcome,
    build_report,
    render_markdown,
    write_report,
)

from sftc_core.checks import FAIL as CHECK_FAIL
from sftc_core.checks import GPU_PLAN, NOT_CHECKED, Check

NOW = dt.datetime(2026, 1, 2, 2, 0, 5, tzinfo=dt.timezone.utc)
PLAN_OK = [
    Check("GPU memory", GPU_PLAN, "PASS", "within 80 GB", "57.1 GiB of 63.1 GiB", details=("bf16 weights: 32.2 GiB = ...", "total: 57.1 GiB")),
    Check("launch plan", GPU_PLAN, NOT_CHECKED, "the rendered job", "no launcher renders one yet", "lands with issue 10"),
]
PLAN_BAD = [*PLAN_OK, Check("LoRA targets", GPU_PLAN, CHECK_FAIL, "NeMo names", "'q_a_proj' is not a NeMo module", "use linear_q_down_proj in finetune.yaml")]
ENV = {"python": "3.11", "platform": "Linux", "cpu_count": 2, "cuda_available": False, "profile": "toy", "train_backend": "hf", "packages": {"dagster": "1.13"}}
GIT = {"git_commit": "abc123", "git_dirty": False}


def _report(stages, plan=PLAN_OK):
    return build_report(stages, gpu_plan=plan, environment=ENV, git=GIT, generated_at=NOW, validation_run="run-1")


def test_status_of_a_stage():
    assert StageOutcome("a", materialized=True).status == PASS
    assert StageOutcome("a", materialized=False).status == NOT_RUN
    assert StageOutcome("a", materialized=True, error="boom").status == FAIL
    assert StageOutcome("a", materialized=True, checks=[CheckOutcome("c", passed=False)]).status == FAIL
    # A failed warning-level check is reported but does not fail the stage.
    assert StageOutcome("a", materialized=True, checks=[CheckOutcome("c", passed=False, severity="WARN")]).status == PASS


def test_ready_only_when_every_stage_passes_and_the_reasons_say_why_not():
    ok = _report([StageOutcome("raw_xml", materialized=True), StageOutcome("sft_model", materialized=True)])
    assert ok["ready_for_gpu"] is True and ok["passed"] == 2
    assert ok["reasons"][0] == "all 2 stages of the toy chain passed with their checks on CPU"
    assert "1 of 2 checks passed, none failed (launch plan NOT CHECKED: see below)" in ok["reasons"][1]  # named, not counted against

    bad = _report(
        [
            StageOutcome("raw_xml", materialized=True),
            StageOutcome("sft_model", materialized=True, checks=[CheckOutcome("validation_loss_decreased", passed=False)]),
            StageOutcome("eval_csv", materialized=False),
        ]
    )
    assert bad["ready_for_gpu"] is False and (bad["passed"], bad["failed"], bad["not_run"]) == (1, 1, 1)
    assert bad["reasons"] == ["sft_model failed: check(s) failed: validation_loss_decreased", "eval_csv was not materialized (downstream of sft_model)"]
    assert _report([])["ready_for_gpu"] is False


def test_ready_only_when_the_gpu_plan_passes_too():
    stages = [StageOutcome("raw_xml", materialized=True)]
    report = _report(stages, PLAN_BAD)
    assert report["toy_chain"]["passed"] is True and report["gpu_plan"]["passed"] is False
    assert report["ready_for_gpu"] is False
    assert report["reasons"] == ["GPU plan: LoRA targets failed: 'q_a_proj' is not a NeMo module. Fix: use linear_q_down_proj in finetune.yaml"]
    assert [Check.from_dict(c) for c in report["gpu_plan"]["checks"]] == PLAN_BAD


def test_the_first_failing_stage_is_named_the_cause():
    report = _report([
        StageOutcome("sft_model", materialized=True, checks=[CheckOutcome("validation_loss_decreased", passed=False, description="training.learning_rate 0.5 too high")]),
        StageOutcome("eval_csv", materialized=True, checks=[CheckOutcome("eval_parse_rate", passed=False, description="months below 50%")]),
    ])
    assert report["reasons"][0] == "sft_model failed: check(s) failed: validation_loss_decreased (training.learning_rate 0.5 too high)"
    assert report["reasons"][1].startswith("eval_csv failed after sft_model (look there first)")


def test_markdown_and_json_twin(tmp_path):
    report = _report(
        [
            StageOutcome("thesis_jsonl", materialized=True, partitions=["2012-01", "2012-02"], figures={"accepted": 64, "parse_rate": 0.987654},
                         checks=[CheckOutcome("accepted_plus_rejected_equals_read", passed=True)]),
            StageOutcome("sft_model", materialized=False, error="step sft_model failed: out of memory"),
        ],
        PLAN_BAD,
    )
    md_path, json_path = write_report(report, tmp_path / "reports")
    markdown = md_path.read_text()
    assert "**Ready for GPU deployment: NO**" in markdown
    assert "- sft_model failed: step sft_model failed: out of memory" in markdown
    assert "| thesis_jsonl | PASS | 2 (2012-01..2012-02) | accepted_plus_rejected_equals_read PASS |" in markdown
    assert "- parse_rate: 0.988" in markdown and "- accepted: 64" in markdown
    assert "## Not tested without a GPU" in markdown and "nemo_model" in markdown
    assert "## Part 1, the toy chain: FAIL" in markdown and "## Part 2, the GPU plan of the full profile: FAIL (1 pass, 1 fail, 1 not checked)" in markdown
    assert "| LoRA targets | GPU plan | FAIL | 'q_a_proj' is not a NeMo module | use linear_q_down_proj in finetune.yaml |" in markdown
    assert "### GPU memory: PASS" in markdown and "- bf16 weights: 32.2 GiB = ..." in markdown  # the arithmetic
    assert "Commit: `abc123`" in markdown and "2026-01-02T02:00:05+00:00" in markdown
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(report))
    assert render_markdown(report) == markdown
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["validation_report.json", "validation_report.md"]


def test_report_says_which_launcher_ran_the_fine_tune():
    import datetime as dt

    from sftc_assets.reports.validation import StageOutcome, build_report, render_markdown

    def report(figures: dict, slurm_present: bool) -> str:
        stage = StageOutcome("sft_model", True, figures=figures)
        env = {"python": "3", "platform": "p", "cpu_count": 2, "cuda_available": False, "profile": "toy", "train_backend": "hf", "packages": {}}
        built = build_report([stage], gpu_plan=PLAN_OK, environment=env, git={}, generated_at=dt.datetime(2026, 1, 1), validation_run=None, slurm_present=slurm_present)
        return render_markdown(built)

    on_slurm = report({"launcher": "slurm", "nodes": 2, "world_size": 2, "slurm_job_id": "9"}, True)
    assert "- Fine-tune launch: `slurm` launcher, 2 node(s), world size 2, Slurm job 9" in on_slurm
    local = report({"launcher": "local", "nodes": 1, "world_size": 1}, False)
    assert "`local` launcher, 1 node(s), world size 1; no Slurm on this node (sinfo did not answer)" in local


def test_report_says_which_engine_answered_the_evaluation_and_what_that_rehearsed():
    import datetime as dt

    from sftc_assets.reports.validation import StageOutcome, build_report, render_markdown

    def report(stages: list) -> str:
        env = {"python": "3", "platform": "p", "cpu_count": 2, "cuda_available": False, "profile": "toy",
               "train_backend": "hf", "packages": {}}  # fmt: skip
        built = build_report(stages, gpu_plan=PLAN_OK, environment=env, git={}, generated_at=dt.datetime(2026, 1, 1),
                             validation_run=None)  # fmt: skip
        return render_markdown(built)

    vllm = report([StageOutcome("eval_csv", True, figures={"engine": "vllm 0.32.0", "rows": 128})])
    assert "- Evaluation served by: vllm 0.32.0 on this node's CPU, the GPU run's engine: its DeepSeek-V3 model" in vllm
    assert "the MTP layer skipped" in vllm and "command builder less the GPUs" in vllm
    fallback = report([StageOutcome("eval_csv", True, figures={"engine": "transformers 5.25.0"})])
    assert "- Evaluation served by: transformers 5.25.0, not the GPU run's engine (vLLM)" in fallback
    assert "its serving code was not rehearsed" in fallback
    assert "- Evaluation served by: unknown" in report([StageOutcome("raw_xml", True)])
