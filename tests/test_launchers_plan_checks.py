"""The GPU plan's items of the launcher layer (sftc_platform/launchers/plan_checks.py): the full profile's
fine-tune rendered by its launcher and checked against the plan's shape, and the target cluster asked where it is
configured and reachable (a Kubernetes API over real HTTP on 127.0.0.1; sinfo where Slurm answers)."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess

import pytest
from kubernetes_api import node

from sftc_assets.reports.validation import build_report, environment_summary, render_markdown
from sftc_assets.training import memory
from sftc_assets.training.architecture import architecture_of
from sftc_assets.training.gpu_plan import build_gpu_plan
from sftc_core.checks import FAIL, NOT_CHECKED, PASS, WARN
from sftc_core.launch import EntryStep
from sftc_core.settings import Settings, load_settings
from sftc_core.text import format_bytes
from sftc_platform.launchers import slurm
from sftc_platform.launchers.plan_checks import gpu_plan_launch_checks, plan_launch
from sftc_platform.launchers.slurm import render_sbatch, slurm_available
from sftc_platform.routing import COMPUTE_CLASSES


def with_plan_launcher(settings: Settings, launcher: str, **cluster_sections) -> Settings:
    """The settings with the full profile's `launch.launcher` replaced (and sections of the cluster config)."""
    full = settings.full_profile
    profile = full.model_copy(update={"launch": full.launch.model_copy(update={"launcher": launcher})})
    cluster = settings.cluster.model_copy(
        update={k: getattr(settings.cluster, k).model_copy(update=v) for k, v in cluster_sections.items()}
    )
    return settings.model_copy(update={"profiles": {**settings.profiles, "full": profile}, "cluster": cluster})


def _checks(settings: Settings) -> dict:
    return {c.name: c for c in build_gpu_plan(settings, check_nemo=False, launch_checks=gpu_plan_launch_checks).checks}


def _target(settings: Settings):
    return _checks(settings)["target cluster"]


def test_without_the_launcher_layer_both_items_say_so(data_dir):
    checks = {c.name: c for c in build_gpu_plan(load_settings(), check_nemo=False).checks}
    assert {checks[n].status for n in ("launch plan", "target cluster")} == {NOT_CHECKED}
    assert "not handed to the plan" in checks["launch plan"].found


def test_each_gpu_asset_of_the_shipped_full_profile_is_routed_to_a_gpu_node_and_the_report_shows_it(data_dir):
    plan = build_gpu_plan(load_settings(), check_nemo=False, launch_checks=gpu_plan_launch_checks)
    rows = {asset: next(c for c in plan.checks if c.name == f"routing: {asset}") for asset in COMPUTE_CLASSES}
    assert list(rows) == ["bf16_checkpoint", "nemo_model", "sft_model", "eval_csv"]  # conversion to evaluation
    for row in rows.values():
        assert row.found.startswith("gpu node (compute class ") and row.needed.startswith("a GPU node for "), row.line
    conversion, nemo_import, finetune, evaluation = rows.values()
    assert "this profile's checkpoint is 641.7 GiB" in conversion.found and "its own Dagster step" in conversion.found
    assert nemo_import.found.startswith("gpu node (compute class gpu); started by the slurm launcher (launch.launcher)")
    assert "import (sftc_assets.training.nemo_entry)" in nemo_import.found
    assert "started by the slurm launcher (launch.launcher): finetune" in finetune.found
    assert "5 node(s) x 8 process(es), 8 GPU(s) per node" in finetune.found
    assert [row.status for row in rows.values()] == [PASS, PASS, PASS, WARN]
    # No launcher here starts a server across nodes: the evaluation's row says so, with the way around it.
    assert "vllm on 4 node(s) x 8 GPU(s)" in evaluation.found and "evaluation.endpoint" in evaluation.fix
    when = dt.datetime(2026, 1, 2)
    environment = environment_summary("toy", "hf")
    report = build_report(
        [], gpu_plan=list(plan.checks), environment=environment, git={}, generated_at=when, validation_run=None
    )
    table = next(line for line in render_markdown(report).splitlines() if line.startswith("| routing: sft_model |"))
    assert table.startswith("| routing: sft_model | GPU plan | PASS | gpu node (compute class auto")


def test_an_endpoint_that_answers_needs_no_server_started(data_dir):
    settings = load_settings()
    full = settings.full_profile
    evaluation = full.evaluation.model_copy(update={"endpoint": "http://serving.example:8000"})
    profiles = {**settings.profiles, "full": full.model_copy(update={"evaluation": evaluation})}
    row = _checks(settings.model_copy(update={"profiles": profiles}))["routing: eval_csv"]
    assert row.status == PASS and "nothing: evaluation.endpoint http://serving.example:8000 answers" in row.found


def test_the_shipped_slurm_job_is_rendered_with_its_nodes_and_gpus(data_dir):
    check = _checks(load_settings())["launch plan"]
    assert check.status == PASS and "sbatch script" in check.found and "5 node(s) x 8 process(es)" in check.found
    assert {"#SBATCH --nodes=5", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1"} <= set(check.details)
    assert any("--nnodes=5" in line and "--nproc-per-node=8" in line for line in check.details)  # each node's torchrun


def test_a_local_launcher_cannot_start_the_five_node_fine_tune(data_dir):
    check = _checks(with_plan_launcher(load_settings(), "local"))["launch plan"]
    assert check.status == FAIL and "the local launcher runs one node, the step asks for 5" in check.found
    assert "launch.launcher: slurm or k8s" in check.fix and "profiles/full.yaml" in check.fix


def test_a_setup_line_that_breaks_the_script_fails_the_plan(data_dir):
    check = _checks(with_plan_launcher(load_settings(), "slurm", slurm={"setup": ['module load "cuda/12.4']}))[
        "launch plan"
    ]
    assert (
        check.status == FAIL
        and "the sbatch script does not parse" in check.found
        and "slurm: / kubernetes:" in check.fix
    )


def test_the_jobset_is_rendered_and_a_missing_image_is_named(data_dir):
    check = _checks(with_plan_launcher(load_settings(), "k8s"))["launch plan"]
    assert check.status == PASS and "JobSet manifest" in check.found
    missing = _checks(
        with_plan_launcher(
            load_settings(), "k8s", kubernetes={"images": {"sftc": "registry.example.com/sftc/sftc:latest"}}
        )
    )
    assert (
        missing["launch plan"].status == FAIL and "kubernetes.images.nemo' is not set" in missing["launch plan"].found
    )
    assert missing["NeMo environment"].status == FAIL and "kubernetes.images.nemo" in missing["NeMo environment"].fix


def test_slurm_is_asked_only_for_a_named_partition_and_where_sinfo_answers(data_dir, tmp_path, monkeypatch):
    check = _target(load_settings())
    assert check.status == NOT_CHECKED and "names no slurm.partition" in check.found
    (tmp_path / "bash").symlink_to(shutil.which("bash"))
    monkeypatch.setenv("PATH", str(tmp_path))  # bash, and no sinfo
    check = _target(with_plan_launcher(load_settings(), "slurm", slurm={"partition": "gpu"}))
    assert check.status == NOT_CHECKED and "sinfo does not answer on this node: partition gpu not asked" in check.found


def _sinfo(*fields: str) -> str:
    return subprocess.run(["sinfo", "-h", *fields], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.slurm
@pytest.mark.skipif(not slurm_available(), reason="no Slurm answers sinfo here: .ci/with_slurm starts a local one")
def test_the_partition_is_asked_with_sinfo_for_gpus_memory_and_its_time_limit(data_dir):
    """Against the Slurm that answers here (.ci/with_slurm: partition ci, two CPU nodes): its nodes hold neither the
    fine-tune's GPUs nor the import's host memory, and a partition time limit below launch.time_limit is named."""
    partition = _sinfo("-o", "%P").splitlines()[0].rstrip("*")
    settings = with_plan_launcher(load_settings(), "slurm", slurm={"partition": partition})
    reference = settings.reference_models["full"]
    ram = memory.import_host_memory(architecture_of(None, reference), None, "").needed_bytes
    check = _target(settings)
    assert check.status == FAIL
    assert (
        f"finetune needs 5 node(s) with 8 GPU(s) and {format_bytes(ram)} of memory each; "
        f"partition {partition} has 0 usable of" in check.found
    )
    assert all(
        f"{node}: 0 GPU(s), " in check.found for node in _sinfo("-N", "-o", "%N").split()
    )  # each node with its memory
    assert "slurm.partition in configs/cluster.yaml" in check.fix
    assert (
        "; sbatch --test-only: error: Invalid generic resource (gres) specification" in check.found
    )  # Slurm's own word: no GPUs here
    nodes = len(_sinfo("-N", "-o", "%N").split())
    fits = (
        f"#!/bin/bash\n#SBATCH --nodes={nodes}\n"
        f"#SBATCH --time={settings.full_profile.launch.time_limit}\nsrun hostname\n"
    )
    starts, said = slurm.sbatch_test_only(fits, partition)
    assert starts and said.startswith("Job ") and f"in partition {partition}" in said  # nothing submitted
    assert not _sinfo("-o", "%A").startswith("1/")  # no job allocated
    spaced = render_sbatch(
        EntryStep("probe", "sftc_core.launch", ()), plan_launch(settings), data_dir / "a b" / "launch"
    )
    assert slurm.sbatch_test_only(spaced, partition)[0]  # the quoted directive is read whole
    if "sftc-ci" not in subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout:
        return  # a real cluster: its partitions are not ours to change
    limit = settings.full_profile.launch.time_limit
    subprocess.run(["scontrol", "update", f"PartitionName={partition}", "MaxTime=00:30:00"], check=True)
    try:
        check = _target(settings)
        assert (
            f"launch.time_limit {limit} is longer than partition {partition}'s time limit of 00:30:00: "
            "Slurm refuses the job" in check.found
        )
    finally:
        subprocess.run(["scontrol", "update", f"PartitionName={partition}", "MaxTime=INFINITE"], check=True)


def _k8s_settings():
    return with_plan_launcher(load_settings(), "k8s")


def test_the_kubernetes_api_is_asked_for_the_gpu_pool(data_dir, kubernetes_cluster):
    settings = _k8s_settings()
    labels = dict(settings.cluster.node_pools.gpu.node_selector)
    gpu_nodes = [node(f"gpu-{i}", labels, 8, "2113536Mi") for i in range(5)]
    kubernetes_cluster.nodes = [*gpu_nodes, node("cpu-0", {"sftc.dev/node-pool": "cpu"}, 0, "64Gi")]
    check = _target(settings)
    assert check.status == PASS and "5 of 5 node(s)" in check.found and "kubeconfig" in check.found

    kubernetes_cluster.nodes = [*gpu_nodes[:3], node("gpu-small", labels, 8, "512Gi")]  # too little memory to import
    check = _target(settings)
    assert check.status == FAIL and "3 of 4 node(s)" in check.found and "nodes in" in check.fix


def test_no_cluster_configuration_is_not_checked_with_the_reason(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    check = _target(_k8s_settings())
    assert check.status == NOT_CHECKED and "no Kubernetes configuration" in check.found
