"""The top floor: the code location (definitions.py), jobs, schedules, sensors, the chain runner and the `sftc`
command line. Importing this package imports no Dagster: `sftc --help` and the plain commands stay light."""
