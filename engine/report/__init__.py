"""Presenters: events and results rendered for a terminal, as JSON or JSON lines, and as Markdown for merge requests. Only the CLI and these print."""
