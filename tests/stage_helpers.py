"""Stage definitions built from settings, as the code location builds them, for tests that materialize one stage."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from sftc_core.settings import Settings, load_settings


def settings_with(settings: Settings | None = None, **profile_sections: dict) -> Settings:
    """The settings of the environment (the data_dir fixture's), with fields of profile sections replaced,
    e.g. `settings_with(training={"batch_size": 4})`."""
    settings = settings or load_settings()
    profile = settings.profile.model_copy(
        update={
            name: getattr(settings.profile, name).model_copy(update=fields) for name, fields in profile_sections.items()
        }
    )
    return settings.model_copy(update={"profile": profile})


def stage_definitions(stage: Callable[[Settings], dg.Definitions], settings: Settings | None = None) -> list:
    """A stage's assets and checks for `dg.materialize`, built from `settings` (default: the environment's)."""
    defs = stage(settings or load_settings())
    return [*defs.assets, *(defs.asset_checks or ())]


def mark_as_written(asset: str, *targets, settings: Settings | None = None) -> None:
    """Mark files a test wrote in place of an upstream asset as that asset would have (its marker, its settings)."""
    from sftc_platform.metadata import stamp

    for target in targets:
        stamp(settings or load_settings(), asset)(target, target)
