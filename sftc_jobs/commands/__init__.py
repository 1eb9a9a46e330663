"""The `sftc` subcommands, one module per stage plus the chain's `run` / `rerun`; each has `register(subparsers)`."""
