"""The `campaign` command: one module per command group (run, prepare, ops, costs, upload, servers),
registered by `parser.build_parser`. No module here imports another's handlers except through
`run` (the one path every command that starts a campaign takes)."""

from pipeline.cli.parser import main

__all__ = ["main"]
