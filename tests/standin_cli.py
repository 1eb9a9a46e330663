"""`sftc` over the stand-in chain as a fresh process (`python tests/standin_cli.py run`): for the tests that
run, kill or race whole `sftc run` processes."""

import sys

from orchestration_standins import standin_stages

from sftc_jobs import location
from sftc_jobs.cli import main

location.STAGES = tuple(standin_stages())
sys.exit(main(sys.argv[1:]))
