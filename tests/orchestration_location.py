"""A code location of stand-in assets (toy profile), loaded by the webserver and daemon in the slow
automation test: the real sensors, job and schedule over assets that run in milliseconds."""

from orchestration_standins import standin_definitions

defs = standin_definitions()
