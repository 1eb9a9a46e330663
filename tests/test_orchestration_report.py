"""The validation report's verdicts and files, from stage outcomes and GPU-plan checks alone (no Dagster run), and
the `ready_for_gpu_deployment` check that reads its verdict."""

from __future__ import annotations

import datetime as dt
import json

from backtest_helpers import cued_records, write_training_pairs

from sftc_assets.reports.validation import (
    FAIL,
    NOT_RUN,
    PASS,
    STAGE_PRECONDITIONS,
    CheckOutcome,
    StageOutcome,
    build_report,
    canary_preconditions,
    render_markdown,
    write_report,
)
from sftc_core.checks import FAIL as CHECK_FAIL
from sftc_core.checks import GPU_PLAN, NOT_CHECKED, Check
from sftc_core.configs import PromptConfig, load_sft_config

NOW = dt.datetime(2026, 1, 2, 2, 0, 5, tzinfo=dt.UTC)
PLAN_OK = [
    Check(
        "GPU memory",
        GPU_PLAN,
        "PASS",
        "within 80 GB",
        "57.1 GiB of 63.1 GiB",
        details=("bf16 weights: 32.2 GiB = ...", "total: 57.1 GiB"),
    ),
    Check(
        "launch plan", GPU_PLAN, NOT_CHECKED, "the rendered job", "no launcher renders one yet", "lands with issue 10"
    ),
]
PLAN_BAD = [
    *PLAN_OK,
    Check(
        "LoRA targets",
        GPU_PLAN,
        CHECK_FAIL,
        "NeMo names",
        "'q_a_proj' is not a NeMo module",
        "use linear_q_down_proj in finetune.yaml",
    ),
]
ENV = {
    "python": "3.11",
    "platform": "Linux",
    "cpu_count": 2,
    "cuda_available": False,
    "profile": "toy",
    "train_backend": "hf",
    "packages": {"dagster": "1.13"},
}
GIT = {"git_commit": "abc123", "git_dirty": False}


def _report(stages, plan=PLAN_OK, canary=None, slurm_present=False):
    return build_report(
        stages,
        gpu_plan=plan,
        environment=ENV,
        git=GIT,
        generated_at=NOW,
        validation_run="run-1",
        canary=canary,
        slurm_present=slurm_present,
    )


def test_status_of_a_stage():
    assert StageOutcome("a", materialized=True).status == PASS
    assert StageOutcome("a", materialized=False).status == NOT_RUN
    assert StageOutcome("a", materialized=True, error="boom").status == FAIL
    assert StageOutcome("a", materialized=True, checks=[CheckOutcome("c", passed=False)]).status == FAIL
    # A failed warning-level check is reported but does not fail the stage.
    assert (
        StageOutcome("a", materialized=True, checks=[CheckOutcome("c", passed=False, severity="WARN")]).status == PASS
    )


def test_ready_only_when_every_stage_passes_and_the_reasons_say_why_not():
    ok = _report([StageOutcome("raw_xml", materialized=True), StageOutcome("sft_model", materialized=True)])
    assert ok["ready_for_gpu"] is True and ok["passed"] == 2
    assert ok["reasons"][0] == "all 2 stages of the toy chain passed with their checks on CPU"
    assert (
        "1 of 2 checks passed, none failed (launch plan NOT CHECKED: see below)" in ok["reasons"][1]
    )  # named, not counted against

    bad = _report(
        [
            StageOutcome("raw_xml", materialized=True),
            StageOutcome(
                "sft_model", materialized=True, checks=[CheckOutcome("validation_loss_decreased", passed=False)]
            ),
            StageOutcome("eval_csv", materialized=False),
        ]
    )
    assert bad["ready_for_gpu"] is False and (bad["passed"], bad["failed"], bad["not_run"]) == (1, 1, 1)
    assert bad["reasons"] == [
        "sft_model failed: check(s) failed: validation_loss_decreased",
        "eval_csv was not materialized (downstream of sft_model)",
    ]
    assert _report([])["ready_for_gpu"] is False


def test_ready_only_when_the_gpu_plan_passes_too():
    stages = [StageOutcome("raw_xml", materialized=True)]
    report = _report(stages, PLAN_BAD)
    assert report["toy_chain"]["passed"] is True and report["gpu_plan"]["passed"] is False
    assert report["ready_for_gpu"] is False
    assert report["reasons"] == [
        "GPU plan: LoRA targets failed: 'q_a_proj' is not a NeMo module. Fix: use linear_q_down_proj in finetune.yaml"
    ]
    assert [Check.from_dict(c) for c in report["gpu_plan"]["checks"]] == PLAN_BAD


def test_a_warning_of_the_gpu_plan_is_said_beside_the_verdict():
    """A WARN holds no verdict back, but the reasons under YES (or NO) say it and its fix, not only the table below."""
    warned = Check(
        "routing: eval_csv",
        GPU_PLAN,
        "WARN",
        "a GPU node",
        "a multi-node server, which no launcher starts",
        "set evaluation.endpoint",
    )
    stages = [StageOutcome("raw_xml", materialized=True)]
    ready = _report(stages, [*PLAN_OK, warned])
    assert ready["ready_for_gpu"] is True
    assert ready["reasons"][-1] == (
        "warning: GPU plan: routing: eval_csv: a multi-node server, which no launcher starts. "
        "Fix: set evaluation.endpoint"
    )
    assert "- warning: GPU plan: routing: eval_csv" in render_markdown(ready)
    assert not any(reason.startswith("warning") for reason in _report(stages)["reasons"])
    not_ready = _report(stages, [*PLAN_BAD, warned])
    assert not_ready["ready_for_gpu"] is False and not_ready["reasons"][-1].startswith("warning: GPU plan: routing")


def test_the_first_failing_stage_is_named_the_cause():
    report = _report(
        [
            StageOutcome(
                "sft_model",
                materialized=True,
                checks=[
                    CheckOutcome(
                        "validation_loss_decreased", passed=False, description="training.learning_rate 0.5 too high"
                    )
                ],
            ),
            StageOutcome(
                "eval_csv",
                materialized=True,
                checks=[CheckOutcome("eval_parse_rate", passed=False, description="months below 50%")],
            ),
        ]
    )
    assert (
        report["reasons"][0]
        == "sft_model failed: check(s) failed: validation_loss_decreased (training.learning_rate 0.5 too high)"
    )
    assert report["reasons"][1].startswith("eval_csv failed after sft_model (look there first)")


def test_markdown_and_json_twin(tmp_path):
    report = _report(
        [
            StageOutcome(
                "thesis_jsonl",
                materialized=True,
                partitions=["2012-01", "2012-02"],
                figures={"accepted": 64, "parse_rate": 0.987654},
                checks=[CheckOutcome("accepted_plus_rejected_equals_read", passed=True)],
            ),
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
    assert (
        "## Part 1, the toy chain: FAIL" in markdown
        and "## Part 2, the GPU plan of the full profile: FAIL (1 pass, 1 fail, 1 not checked)" in markdown
    )
    assert (
        "| LoRA targets | GPU plan | FAIL | 'q_a_proj' is not a NeMo module | use linear_q_down_proj in finetune.yaml |"
        in markdown
    )
    assert "### GPU memory: PASS" in markdown and "- bf16 weights: 32.2 GiB = ..." in markdown  # the arithmetic
    assert "Commit: `abc123`" in markdown and "2026-01-02T02:00:05+00:00" in markdown
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(report))
    assert render_markdown(report) == markdown
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        "validation_report.json",
        "validation_report.md",
    ]


def test_report_says_which_launcher_ran_the_fine_tune():

    from sftc_assets.reports.validation import StageOutcome, render_markdown

    def report(figures: dict, slurm_present: bool) -> str:
        return render_markdown(_report([StageOutcome("sft_model", True, figures=figures)], slurm_present=slurm_present))

    waited = {"pending_s": 84.0, "pending_reason": "Priority, Resources"}
    on_slurm = report({"launcher": "slurm", "nodes": 2, "world_size": 2, "slurm_job_id": "9", **waited}, True)
    assert "- Fine-tune launch: `slurm` launcher, 2 node(s), world size 2, Slurm job 9; started after 1 min" in on_slurm
    assert "1 min 24 s pending (Priority, Resources) (to within one poll of its state)" in on_slurm
    local = report({"launcher": "local", "nodes": 1, "world_size": 1}, False)
    assert "`local` launcher, 1 node(s), world size 1; no Slurm on this node (sinfo did not answer)" in local
    assert "- Fine-tune method: unknown (sft_model did not report one)" in local
    # and whether it was the GPU recipe's LoRA or a full fine-tune
    assert "- Fine-tune method: a full fine-tune, not the GPU recipe's LoRA" in report({"peft": "none"}, False)
    assert "proven by tests/test_training_hf.py, not by this run" in report({"peft": "none"}, False)
    assert "- Fine-tune method: LoRA on the GPU recipe's targets" in report({"peft": "lora"}, False)


def test_report_shows_the_lora_rehearsal_beside_a_full_fine_tune():
    from sftc_assets.reports.validation import CheckOutcome, StageOutcome, render_markdown

    def method(rehearsed: bool) -> tuple[dict, str]:
        outcome = "the recipe's LoRA, rank 32 / alpha 32 on 5 targets: ..." if rehearsed else "the loss barely fell"
        check = CheckOutcome("lora_recipe_rehearsed", rehearsed, description=outcome)
        report = _report([StageOutcome("sft_model", True, figures={"peft": "none"}, checks=[check])])
        (line,) = [line for line in render_markdown(report).splitlines() if line.startswith("- Fine-tune method:")]
        return report, line

    report, line = method(True)
    assert line.endswith(
        "beside it, the recipe's LoRA, rank 32 / alpha 32 on 5 targets: ... (sft_model's check lora_recipe_rehearsed)"
    )
    assert report["ready_for_gpu"]
    report, line = method(False)
    assert line.endswith("the recipe's LoRA rehearsed beside it FAILED: the loss barely fell")
    # a failed rehearsal fails the fine-tune's stage: the GPU run's LoRA is not known to work
    assert not report["ready_for_gpu"] and any("lora_recipe_rehearsed" in r for r in report["reasons"])


SFT = load_sft_config()


def _canary_stages(cue_passed: bool = False, loss_decreased: bool = True) -> list[StageOutcome]:
    """A validation whose splits and fine-tune passed their checks (or not) and whose backtest ran the canary."""
    verdict = "The planted cue did not come through: accuracy on the 64 cued theses 26.6% (95% CI 15.6% to 37.5%)"
    loss = [CheckOutcome("training_loss_stable", True), CheckOutcome("validation_loss_decreased", loss_decreased)]
    cue = CheckOutcome("planted_cue_recovered", passed=cue_passed, description="" if cue_passed else verdict)
    return [
        StageOutcome("hf_splits", materialized=True, checks=[CheckOutcome("splits_disjoint_and_ordered", passed=True)]),
        StageOutcome("sft_model", True, figures={"initial_val_loss": 6.93, "final_val_loss": 0.462}, checks=loss),
        StageOutcome("backtest_report", True, figures={"cue_agrees_with_label": 0.78, "cued_rows": 64}, checks=[cue]),
    ]


def test_a_failed_canary_names_the_precondition_that_does_not_hold(tmp_path):
    without_facts = {"input_template": "{ticker} on {as_of_date} for {horizon_days}", "omit_fields": {"facts": "none"}}
    omitted = SFT.prompt.model_dump() | without_facts
    write_training_pairs(tmp_path, cued_records(), SFT.model_copy(update={"prompt": PromptConfig(**omitted)}))
    stages = _canary_stages()
    canary = canary_preconditions(stages, tmp_path, SFT.target_format)
    assert [(c.name, c.status) for c in canary] == [
        ("the cue reaches the prompts", "FAIL"),
        ("the labels are not scrambled", "PASS"),
        ("the splits are ordered", "PASS"),
        ("training converged", "PASS"),
    ]
    report = _report(stages, canary=canary)
    assert report["reasons"][0].startswith("backtest_report failed: check(s) failed: planted_cue_recovered (The")
    cause = report["reasons"][1]
    assert cause.startswith("planted_cue_recovered's preconditions that do not hold: the cue reaches the prompts: 0 of")
    assert "Fix: put {facts} back in prompt.input_template" in cause
    markdown = render_markdown(report)
    assert "  - precondition, the cue reaches the prompts: FAIL: 0 of the 89 training pairs" in markdown
    converged = "  - precondition, training converged: PASS: validation loss 6.93 -> 0.462; training_loss_stable PASS"
    assert converged in markdown
    assert report["planted_cue_preconditions"] == [c.as_dict() for c in canary]


def test_when_every_precondition_holds_the_report_says_where_the_cause_lies(tmp_path):
    write_training_pairs(tmp_path, cued_records(), SFT)
    stages = _canary_stages()
    report = _report(stages, canary=canary_preconditions(stages, tmp_path, SFT.target_format))
    assert report["reasons"][1] == (
        "planted_cue_recovered's preconditions hold: the cue reaches the prompts, the labels are not scrambled, the "
        "splits are ordered, training converged: the cause lies in what the model learnt from them, or in the "
        "evaluation"
    )
    # A fine-tune whose loss did not fall is named; a canary that passed asks for nothing.
    failed = canary_preconditions(_canary_stages(loss_decreased=False), tmp_path, SFT.target_format)
    assert [c.status for c in failed if c.name == "training converged"] == ["FAIL"]
    assert canary_preconditions(_canary_stages(cue_passed=True), tmp_path, SFT.target_format) is None
    missing = canary_preconditions(stages, tmp_path / "none", SFT.target_format)
    assert [c.status for c in missing[:2]] == [NOT_CHECKED, NOT_CHECKED]


def test_the_stage_checks_the_canary_reads_are_the_chains_own():
    from sftc_core.settings import load_settings
    from sftc_jobs.location import build_definitions

    defs = build_definitions(load_settings(env={}))
    keys = [key for assets_def in defs.assets for key in getattr(assets_def, "check_keys", ())]
    keys += [key for check_def in defs.asset_checks for key in check_def.check_keys]
    checks = {(key.asset_key.to_user_string(), key.name) for key in keys}
    for asset, names in STAGE_PRECONDITIONS.values():
        assert {(asset, name) for name in names} <= checks, (asset, names)


def test_report_says_which_engine_answered_the_evaluation_and_what_that_rehearsed():

    from sftc_assets.reports.validation import StageOutcome, render_markdown

    def report(stages: list) -> str:
        return render_markdown(_report(stages))

    vllm = report([StageOutcome("eval_csv", True, figures={"engine": "vllm 0.32.0", "rows": 128})])
    assert "- Evaluation served by: vllm 0.32.0 on this node's CPU, the GPU run's engine: its DeepSeek-V3 model" in vllm
    assert "the MTP layer skipped" in vllm and "command builder less the GPUs" in vllm
    fallback = report([StageOutcome("eval_csv", True, figures={"engine": "transformers 5.25.0"})])
    assert "- Evaluation served by: transformers 5.25.0, not the GPU run's engine (vLLM)" in fallback
    assert "its serving code was not rehearsed" in fallback
    assert "- Evaluation served by: unknown" in report([StageOutcome("raw_xml", True)])


def test_the_ready_check_called_directly_reads_the_reports_verdict_and_reasons(tmp_path):
    from sftc_assets.reports.assets import check_ready_for_gpu_deployment

    passed = StageOutcome("thesis_jsonl", materialized=True, checks=[CheckOutcome("jsonl_schema", passed=True)])
    ready = _report([passed])
    write_report(ready, tmp_path)
    result = check_ready_for_gpu_deployment(tmp_path)
    assert ready["ready_for_gpu"] and result.passed and result.metadata["reasons"].value == ready["reasons"]
    report = _report([passed, StageOutcome("sft_model", materialized=False, error="out of memory")], PLAN_BAD)
    write_report(report, tmp_path)
    result = check_ready_for_gpu_deployment(tmp_path)
    assert not result.passed and result.metadata["reasons"].value == report["reasons"]
    assert any("out of memory" in reason for reason in report["reasons"])
