"""The Dagster-facing floor: the GPU resource, price sources, node routing, partitions, asset metadata helpers
and the launchers (launchers/: local, slurm, k8s). Only resources.py, partitions.py, metadata.py, run_history.py
and launchers/pipes.py import Dagster, so the `sftc` command uses the price sources, routing and launchers without it."""
