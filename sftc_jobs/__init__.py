"""Definitions, partitions, jobs, schedules, sensors and the `sftc` command line."""
