"""The GPU plan's launch items, which need the launcher layer: the sbatch script or JobSet of the GPU run rendered.

`LAUNCH_PLAN_CHECK` is what `sftc preflight`, the gpu_preflight check and the validation report hand to the plan.
"""

from __future__ import annotations

from sftc_assets.training.gpu_plan import LaunchPlanCheck

LAUNCH_PLAN_CHECK: LaunchPlanCheck | None = None
