"""The Dagster code location of sftc, loaded by `dagster dev` / the webserver (workspace.yaml).

The edge: the settings (environment, `.env`, the profile and every config file) are read once here and
passed down; they decide where `auto` assets run, which automation sensors start on, whether the nightly
CPU validation is on, and SFTC_K8S_PLACEMENT (run | step) whether a cluster gives each run or each step
its own pod. Static per profile, so each code location has one answer.
"""

from sftc_core.settings import load_settings
from sftc_jobs.location import build_definitions

defs = build_definitions(load_settings())
