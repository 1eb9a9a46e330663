"""The Dagster-facing floor: the GPU resource, price sources, node routing, partitions, asset metadata helpers
and the NeMo launchers. Only resources.py, partitions.py and metadata.py import Dagster, so the `sftc` command
uses the price sources and routing without it."""
