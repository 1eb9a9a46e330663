"""torch's intra-op thread count for one piece of work (process-wide), restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Set `count` threads for the block (None leaves torch alone):
    on a busy 2-core node more workers only wait on each other."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
