"""The `playbook` command line: parses, calls `engine.api`, prints. `main` and `entry` live in
`engine.cli.main`; they are re-exported here so `engine.cli:entry` (the console script) and
`python -m engine.cli` keep working."""

from engine.cli.main import build_parser, entry, main

__all__ = ["main", "entry", "build_parser"]
