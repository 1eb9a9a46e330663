"""One launcher layer for the long steps (the fine-tunes, NeMo's import and export, and later servers):
`local` (a subprocess on this node), `slurm` (an sbatch job, each node a torchrun agent, containers through
pyxis/enroot), `k8s` (a JobSet, each pod a torchrun agent).

Plain modules, no Dagster, so the `sftc` command uses them as they are: plan.py (what a launch is made of and the
per-node torchrun command), local.py, slurm.py (sbatch rendering, Slurm's states, sinfo), k8s.py (the JobSet
manifest and the Kubernetes API), jobs.py (start, watch, stream the log, cancel, fail with the job's id and state).
pipes.py alone imports Dagster: the same jobs with Dagster Pipes around them, for the assets.
"""
