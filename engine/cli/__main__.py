"""`python -m engine.cli`: the `playbook` command."""

from engine.cli.main import entry

entry()
