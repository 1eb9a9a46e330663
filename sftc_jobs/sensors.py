"""Declarative automation split by node class: one sensor for the CPU assets, one for the GPU assets.

Dagster refuses two automation-condition sensors targeting the same asset, so the split is static per
profile: each materializable asset belongs to exactly one sensor, chosen by the node class its compute class
resolves to in this profile (the `sftc/node` asset tag of `asset_placement`): its target reads
`tag:"sftc/node"="cpu"` in the web UI. Each sensor adds its node's run tags (`sftc/node`, and
`dagster-k8s/config` where Kubernetes places runs), so the run launcher puts every run it emits on the right
node pool. The condition, `missing_or_stale()`, sits on each automated asset itself (`automated`, applied
by the code location), so the asset's page shows it. The sensors run in the code server
(`use_user_code_server=True`), which lets tests evaluate them with `build_sensor_context`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import dagster as dg

from sftc_core.settings import Settings
from sftc_platform.routing import NODE_CLASSES, NODE_TAG, NodeClass, launched_run_tags

AC = dg.AutomationCondition

SENSOR_NAMES: dict[NodeClass, str] = {"cpu": "automation_cpu_node", "gpu": "automation_gpu_node"}


def missing_or_stale() -> dg.AutomationCondition:
    """Materialize what is missing (every partition, not only the latest), or stale (a dependency or the code changed).

    A partition whose last run failed is not retried on every tick; it is retried when something upstream
    or its code changes. Nothing is requested while its dependencies are missing or in progress.
    """
    missing = (AC.missing() & ~AC.execution_failed()).with_label("missing (last run did not fail)")
    stale = (
        (AC.any_deps_updated() | AC.code_version_changed())
        .since_last_handled()
        .with_label("dependency or code changed")
    )
    return ((missing | stale) & ~AC.any_deps_missing() & ~AC.any_deps_in_progress() & ~AC.in_progress()).with_label(
        "missing_or_stale"
    )


def asset_node_class(assets_def: dg.AssetsDefinition, key: dg.AssetKey | None = None) -> NodeClass:
    """The node class `asset_placement` tagged an asset with (cpu when it declares none)."""
    spec = assets_def.get_asset_spec(key)
    node = spec.tags.get(NODE_TAG, "cpu")
    if node not in NODE_CLASSES:
        raise ValueError(f"asset {spec.key.to_user_string()}: tag {NODE_TAG}={node!r}, expected cpu or gpu")
    return node


def keys_by_node_class(assets: Iterable[dg.AssetsDefinition | dg.SourceAsset]) -> dict[NodeClass, list[dg.AssetKey]]:
    """Materializable asset keys grouped by node class (observed source assets are not automated here)."""
    groups: dict[NodeClass, list[dg.AssetKey]] = {node: [] for node in NODE_CLASSES}
    for assets_def in assets:
        if isinstance(assets_def, dg.AssetsDefinition) and not isinstance(assets_def, dg.AssetChecksDefinition):
            for key in sorted(assets_def.keys):
                groups[asset_node_class(assets_def, key)].append(key)
    return groups


def automated(assets_def: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """The asset with `missing_or_stale()` as its automation condition (an asset no sensor targets must not carry
    one: Dagster would give it a default sensor of its own)."""
    return dg.map_asset_specs(
        lambda spec: spec.replace_attributes(automation_condition=missing_or_stale()), [assets_def]
    )[0]


def automation_sensors(
    assets: Sequence[dg.AssetsDefinition | dg.SourceAsset],
    settings: Settings,
    *,
    running: Iterable[NodeClass],
    excluded: Iterable[dg.AssetKey] = (),
    minimum_interval_seconds: int = 30,
) -> list[dg.AutomationConditionSensorDefinition]:
    """One automation sensor per node class over that class's assets (minus `excluded`); `running` ones start on.
    The assets carry their condition (`automated`); assets and checks without one are not evaluated."""
    running, excluded = set(running), set(excluded)
    sensors = []
    for node, keys in keys_by_node_class(assets).items():
        target = dg.AssetSelection.tag(NODE_TAG, node)
        if excluded & set(keys):
            target = target - dg.AssetSelection.assets(*sorted(excluded & set(keys), key=lambda k: k.to_user_string()))
        with warnings.catch_warnings():
            # use_user_code_server is a beta parameter, chosen on purpose (see the module doc).
            warnings.simplefilter("ignore", dg.BetaWarning)
            sensor = dg.AutomationConditionSensorDefinition(
                SENSOR_NAMES[node],
                target=target,
                run_tags=launched_run_tags(node, settings),
                use_user_code_server=True,
                default_status=dg.DefaultSensorStatus.RUNNING if node in running else dg.DefaultSensorStatus.STOPPED,
                minimum_interval_seconds=minimum_interval_seconds,
                description=(
                    f"Materializes what is missing or stale among the {node.upper()}-node assets "
                    f"(tag {NODE_TAG}={node}), in runs tagged {NODE_TAG}={node}. "
                    "Stop it here, or start the web UI with SFTC_AUTOMATION=off, to keep it from running anything."
                ),
            )
        sensors.append(sensor)
    return sensors
