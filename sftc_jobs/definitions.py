"""The Dagster code location of sftc: every stage's assets and checks, resources, jobs, schedules, sensors.

Loaded by `dagster dev` / the webserver (workspace.yaml) and by `sftc run`. The profile (SFTC_PROFILE,
read once here) decides where `auto` assets run, which automation sensors start on, and whether the
nightly CPU validation is on: static per profile, so each code location has one answer.
SFTC_K8S_PLACEMENT (run | step) says whether a cluster gives each run or each step its own pod.
"""

from sftc_jobs.location import build_definitions, load_stage_modules
from sftc_resources.routing import placement_mode
from sftc_resources.settings import load_settings

_SETTINGS = load_settings()
defs = build_definitions(load_stage_modules(), _SETTINGS.profile_name, _SETTINGS.train_backend, placement_mode())
