"""The GPU gate: probing, choose_device / require_gpus, and GpuResource failing before any work."""

from __future__ import annotations

import dagster as dg
import pytest
import torch

from sftc_core.gpu import (
    GpuDevice,
    GpuGateError,
    GpuProbe,
    choose_device,
    probe_gpus,
    require_gpus,
)
from sftc_core.text import format_bytes
from sftc_jobs.location import NodeGpus
from sftc_platform import resources
from sftc_platform.resources import GpuResource

GIB = 1 << 30


def _probe(*memories_gib: float, triton_fp8: bool = True) -> GpuProbe:
    devices = tuple(GpuDevice(i, "NVIDIA H100 80GB HBM3", int(m * GIB), (9, 0)) for i, m in enumerate(memories_gib))
    return GpuProbe(bool(devices), devices, "2.13.0", "12.8" if devices else None, "3.4.0", triton_fp8, "probed")


NO_GPU = _probe()


def test_probe_of_this_node_matches_torch():
    probe = probe_gpus()
    assert probe.cuda_available == torch.cuda.is_available()
    assert probe.device_count == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert probe.torch_version == torch.__version__
    if not probe.device_count:
        assert not probe.triton_fp8 and "no CUDA device" in probe.describe()


def test_choose_device_prefers_cuda_and_allows_cpu_only_for_small_checkpoints():
    assert choose_device("bf16_checkpoint", 10**12, 2 * 10**9, _probe(80)) == "cuda"
    assert choose_device("bf16_checkpoint", 5 * 10**6, 2 * 10**9, NO_GPU) == "cpu"
    assert choose_device("bf16_checkpoint", 2 * 10**9, 2 * 10**9, NO_GPU) == "cpu"  # the limit itself is allowed
    with pytest.raises(GpuGateError) as info:
        choose_device("bf16_checkpoint", 689 * 10**9, 2 * 10**9, NO_GPU)
    message = str(info.value)
    for text in ("bf16_checkpoint", "641.7 GiB", "1.9 GiB", "cpu_max_checkpoint_bytes", "no CUDA device"):
        assert text in message, text


def test_require_gpus_counts_only_devices_with_enough_memory():
    assert require_gpus("sft_model", 2, 70 * GIB, _probe(80, 80, 40)).device_count == 3
    with pytest.raises(GpuGateError) as info:
        require_gpus("sft_model", 3, 70 * GIB, _probe(80, 80, 40))
    assert "needs 3 CUDA GPU(s) with at least 70.0 GiB" in str(info.value) and "has 2 such device(s)" in str(info.value)
    assert "40.0 GiB" in str(info.value)  # the node's devices are listed
    with pytest.raises(GpuGateError, match="has 0 such"):
        require_gpus("sft_model", 1, 1, NO_GPU)


def test_gpu_resource_fails_with_dagster_failure_before_work(monkeypatch):
    calls = []

    def fake_probe(fp8_check=None):
        calls.append(fp8_check is not None)
        return NO_GPU

    monkeypatch.setattr(resources, "probe_gpus", fake_probe)
    resource = NodeGpus()  # the code location's: the definitions hand it the Triton kernel's self-test
    assert resource.choose_device("bf16_checkpoint", 1000, 2000) == "cpu"
    with pytest.raises(dg.Failure) as info:
        resource.choose_device("bf16_checkpoint", 3000, 2000)
    assert "bf16_checkpoint needs a CUDA GPU" in info.value.description
    assert "gpu_probe" in info.value.metadata
    with pytest.raises(dg.Failure, match="needs 8 CUDA GPU"):
        resource.require_gpus("sft_model", 8, 80 * GIB)
    assert calls == [True]  # probed once per resource instance, the Triton kernel asked
    assert GpuResource().probe() is NO_GPU and calls == [True, False]  # without the definitions' check: not asked


def test_gpu_resource_in_an_asset_stops_the_run_before_the_body(monkeypatch):
    monkeypatch.setattr(resources, "probe_gpus", lambda fp8_check=None: NO_GPU)
    ran = []

    @dg.asset
    def needs_eight_gpus(gpu: GpuResource) -> None:
        gpu.require_gpus("needs_eight_gpus", 8, 80 * GIB)
        ran.append(True)

    result = dg.materialize([needs_eight_gpus], resources={"gpu": GpuResource()}, raise_on_error=False)
    assert not result.success and not ran
    failure = result.get_step_failure_events()[0]
    assert "needs 8 CUDA GPU(s)" in failure.step_failure_data.user_failure_data.description


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1023, 1024, 5 * 10**6, 80 * GIB, 689 * 10**9, 3 * 2**40)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "4.8 MiB",
        "80.0 GiB",
        "641.7 GiB",
        "3.0 TiB",
    ]
