"""The project resource: settings (.env + profile) and artifact paths, as assets see them."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from sftc_resources.paths import ArtifactPaths
from sftc_resources.settings import Settings, load_settings


class ProjectResource(dg.ConfigurableResource):
    """Settings come from the environment and `.env`; `data_dir` overrides SFTC_DATA_DIR (tests)."""

    data_dir: str | None = None

    def settings(self) -> Settings:
        settings = load_settings()
        if self.data_dir:
            settings = settings.model_copy(update={"data_dir": Path(self.data_dir).absolute()})
        return settings

    def paths(self) -> ArtifactPaths:
        return ArtifactPaths(self.settings().data_dir)
