"""What the stages run on, below them and above the ground floor: the launchers (launchers/: local, slurm, k8s)
and their checks before submission, node routing and the run tags, price sources, partitions, how an asset writes
and what its metadata says, run history, and the Dagster resources (resources.py). Only resources.py,
partitions.py, metadata.py, run_history.py and launchers/pipes.py import Dagster, so the `sftc` command uses the
price sources, routing and launchers without it."""
