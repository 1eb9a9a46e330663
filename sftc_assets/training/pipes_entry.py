"""Dagster Pipes inside a launched entry (hf_entry, nemo_entry): opened on global rank 0 only.

Imports only dagster_pipes (no Dagster), so it loads in the NeMo environment too. Launched by Dagster, the
bootstrap variables reach every rank; one writer per message channel is rank 0. Launched by hand, Pipes is a no-op.
"""

from __future__ import annotations

import os

from dagster_pipes import PipesContext, open_dagster_pipes


def global_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def open_pipes() -> PipesContext:
    """The Pipes context on global rank 0; other torchrun ranks get the no-op context."""
    if global_rank() != 0:
        for var in ("DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"):
            os.environ.pop(var, None)
    return open_dagster_pipes()
