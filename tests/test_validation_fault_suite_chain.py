"""The faults that only show while the toy chain runs, planted in a clone of the repository and run with
`sftc run` as a user would: a learning rate that makes the loss climb, a generation budget shorter than the
answers. Each is named by its setting, in the first error or in the report, not only by its symptom three stages
later (a parse rate of 0). A GPU-plan fault rides along to show the report flips to NO with its reason.
The config faults of every other class: test_validation_fault_suite.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from config_helpers import edit_yaml

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
CLONED = ("sftc_core", "sftc_assets", "sftc_platform", "sftc_jobs", "configs", "pyproject.toml")


def clone(tmp_path: Path) -> Path:
    """The working tree's code and configs: `python -m sftc_jobs.cli` run there imports them, not the installed copy."""
    root = tmp_path / "clone"
    root.mkdir()
    for name in CLONED:
        source = REPO_ROOT / name
        (
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
            if source.is_dir()
            else shutil.copy(source, root / name)
        )
    return root


def sftc_run(root: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    home, data = tmp_path / "dagster_home", tmp_path / "data"
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "TRAIN_START_DATE",
            "TRAIN_END_DATE",
            "TEST_START_DATE",
            "TRAIN_BACKEND",
            "SFTC_PROFILE",
            "EODHD_API_KEY",
        )
    }
    env |= {"PYTHONPATH": str(root), "DAGSTER_HOME": str(home), "SFTC_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1"}
    # The clone holds code and configs, not the environments: the toy is served by this checkout's vLLM.
    env.setdefault("SFTC_VLLM_PYTHON", str(REPO_ROOT / ".venv-vllm" / "bin" / "python"))
    return subprocess.run(
        [sys.executable, "-m", "sftc_jobs.cli", "run"], cwd=root, env=env, capture_output=True, text=True, timeout=1800
    )


def test_a_climbing_loss_stops_the_chain_at_the_fine_tune_naming_the_learning_rate(tmp_path):
    root = clone(tmp_path)
    toy = root / "configs" / "profiles" / "toy.yaml"
    # On the pretrained base, clipped at max_grad_norm, 0.5 only stalls the loss (4.1 -> 3.6); 0.99 makes it climb.
    edit_yaml(toy, lambda raw: raw["training"].update(learning_rate=0.99))
    training = yaml.safe_load(toy.read_text())["training"]
    done = sftc_run(root, tmp_path)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    failure = done.stderr[done.stderr.index("\nFAILED: sft_model") :]  # the failure block names the check's own words
    assert "check training_loss_stable failed: the training loss climbed to" in failure
    assert (
        f"training.learning_rate 0.99 (warmup_steps {training['warmup_steps']}, "
        f"max_grad_norm {training['max_grad_norm']:g}) in {toy} is likely too high" in failure
    )
    assert not (tmp_path / "data" / "eval").exists()  # stopped there: no evaluation of a model that did not learn


def test_a_short_generation_budget_and_a_plan_fault_flip_the_report_to_no_with_their_settings(tmp_path):
    root = clone(tmp_path)
    edit_yaml(root / "configs" / "profiles" / "toy.yaml", lambda raw: raw["evaluation"].update(max_new_tokens=8))
    edit_yaml(
        root / "configs" / "nemo" / "finetune.yaml",
        lambda raw: raw["lora"].update(target_modules=["q_a_proj", "o_proj"]),
    )
    done = sftc_run(root, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]  # the chain ran; the report judges it
    report = (tmp_path / "data" / "reports" / "validation_report.md").read_text()
    assert "**Ready for GPU deployment: NO**" in report
    reasons = report[: report.index("- Date:")]
    # The short budget cuts the LoRA rehearsal's answers too, and it says so rather than blaming the adapters; the
    # evaluation fails after it, naming the same setting.
    assert (
        "- sft_model failed: check(s) failed: lora_recipe_rehearsed (0 of the 8 validation answers of the rehearsed "
        "LoRA parse (parse rate 0%, under lora_rehearsal.min_parse_rate 50%): the answers need up to" in reasons
    )
    assert "but evaluation.max_new_tokens 8 in" in reasons and "cuts them (eval_csv's parse-rate check" in reasons
    assert (
        "- eval_csv failed after sft_model (look there first): check(s) failed: eval_parse_rate (months below a parse "
        "rate of 50%" in reasons
    )
    assert "evaluation.max_new_tokens 8 in" in reasons and "is shorter than the answers; raise it" in reasons
    assert (
        "GPU plan: LoRA targets failed: lora.target_modules names no NeMo module for 'q_a_proj' "
        "(that is the transformers name; NeMo calls it linear_q_down_proj)" in reasons
    )
    assert "## Part 1, the toy chain: FAIL" in report and "## Part 2, the GPU plan of the full profile: FAIL" in report


def test_a_prompt_without_the_facts_fails_the_canary_naming_the_template(tmp_path):
    """The facts left out of the prompt on purpose (the load accepts an omission with its reason): the model never
    sees the desk note, the planted cue does not come through, and the report names the precondition that broke."""
    root = clone(tmp_path)
    without_facts = {
        "input_template": "Ticker: {ticker}\nAs of: {as_of_date}\nHorizon: {horizon_days} trading days",
        "omit_fields": {"facts": "to see what the model makes of the date alone"},
    }
    edit_yaml(root / "configs" / "sft_config.yaml", lambda raw: raw["prompt"].update(without_facts))
    done = sftc_run(root, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]  # the chain ran; the report judges it
    report = json.loads((tmp_path / "data" / "reports" / "validation_report.json").read_text())
    assert report["ready_for_gpu"] is False
    cause = next(reason for reason in report["reasons"] if reason.startswith("planted_cue_recovered's preconditions"))
    assert cause.startswith("planted_cue_recovered's preconditions that do not hold: the cue reaches the prompts: 0 of")
    assert "Fix: put {facts} back in prompt.input_template" in cause


def test_a_recipe_lora_that_learns_too_little_flips_the_report_to_no_naming_its_rehearsal(tmp_path):
    """The full fine-tune still recovers the canary; only the nightly rehearsal of the GPU recipe's LoRA sees that
    alpha 1 (a thirty-second of the recipe's scale) leaves the adapters unable to learn the answers."""
    root = clone(tmp_path)
    edit_yaml(root / "configs" / "nemo" / "finetune.yaml", lambda raw: raw["lora"].update(alpha=1))
    done = sftc_run(root, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]  # the chain ran; the report judges it
    assert "check lora_recipe_rehearsed of sft_model FAILED" in done.stderr + done.stdout
    report = (tmp_path / "data" / "reports" / "validation_report.md").read_text()
    assert "**Ready for GPU deployment: NO**" in report
    reasons = report[: report.index("- Date:")]
    assert "- sft_model failed: check(s) failed: lora_recipe_rehearsed (the recipe's LoRA (rank 32, alpha 1," in reasons
    assert "a fall under lora_rehearsal.min_val_loss_drop 1.5" in reasons
    assert "under lora_rehearsal.min_parse_rate 50%" in reasons
    assert "- Fine-tune method: a full fine-tune" in report and "the recipe's LoRA rehearsed beside it FAILED" in report
    backtest = json.loads((tmp_path / "data" / "backtest" / "metrics.json").read_text())
    assert backtest["planted_cue"]["recovered"]  # the full fine-tune the canary reads is unharmed
