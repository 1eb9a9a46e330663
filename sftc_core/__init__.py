"""The ground floor of sftc: settings and configs, artifact paths, atomic I/O, the market calendar and forward
returns, the NeMo data format, the target format and action parsing, metrics, small text helpers.

Nothing here imports the rest of sftc or Dagster; every stage, wrapper and command builds on it.
"""
