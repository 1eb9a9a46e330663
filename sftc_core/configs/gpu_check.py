"""configs/gpu_check.yaml: each `sftc gpu-check` step's limit and expected result."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from sftc_core.configs.base import CONFIG_DIR, Strict, load_yaml_model


class GpuStepConfig(Strict):
    limit_s: float = Field(gt=0)


class CudaStepConfig(GpuStepConfig):
    min_devices: int = Field(default=1, ge=1)


class TritonStepConfig(GpuStepConfig):
    shapes: list[tuple[int, int]] = Field(min_length=1)
    bandwidth_shape: tuple[int, int]
    repeats: int = Field(default=20, ge=1)
    min_copy_ratio: float = Field(gt=0)

    @field_validator("shapes", "bandwidth_shape")
    @classmethod
    def _positive(cls, value):
        shapes = value if isinstance(value, list) else [value]
        if any(side < 1 for shape in shapes for side in shape):
            raise ValueError(f"every side of a shape must be at least 1, got {value}")
        return value


class HfStepConfig(GpuStepConfig):
    max_steps: int | None = Field(default=None, ge=1)
    max_val_loss_ratio: float = Field(gt=0)
    min_parse_rate: float = Field(ge=0, le=1)


class NemoStepConfig(GpuStepConfig):
    steps: int = Field(ge=4)
    learning_rate: float = Field(gt=0)
    test_prompts: int = Field(default=16, ge=1)


class ServingStepConfig(GpuStepConfig):
    engines: list[Literal["vllm", "sglang"]] = Field(min_length=1)
    min_parse_rate: float = Field(ge=0, le=1)
    min_agreement: float = Field(ge=0, le=1)


class GpuTestsStepConfig(GpuStepConfig):
    marker: str = Field(min_length=1)
    paths: list[str] = Field(min_length=1)
    max_skipped: int = Field(default=0, ge=0)


class GpuCheckConfig(Strict):
    """`sftc gpu-check`: each step's time limit and expected result, in the order the steps run."""

    total_limit_s: float = Field(gt=0)
    cuda: CudaStepConfig
    triton_kernel: TritonStepConfig
    toy_inputs: GpuStepConfig
    hf_cuda: HfStepConfig
    nemo: NemoStepConfig
    serving: ServingStepConfig
    gpu_tests: GpuTestsStepConfig

    @property
    def steps(self) -> dict[str, GpuStepConfig]:
        return {name: getattr(self, name) for name in type(self).model_fields if name != "total_limit_s"}

    @model_validator(mode="after")
    def _within_total(self) -> GpuCheckConfig:
        total = sum(step.limit_s for step in self.steps.values())
        if total > self.total_limit_s:
            limits = " + ".join(f"{name} {step.limit_s:g}" for name, step in self.steps.items())
            raise ValueError(
                f"the steps' limit_s add up to {total:g} s ({limits}), "
                f"above total_limit_s {self.total_limit_s:g}: lower some"
            )
        return self


def load_gpu_check_config(path: Path | str | None = None) -> GpuCheckConfig:
    return load_yaml_model(path or CONFIG_DIR / "gpu_check.yaml", GpuCheckConfig)
