"""The rich Console every text output goes through, sized for where it goes.

On a terminal rich wraps at the terminal's width. A pipe or a file (a CI log) has no width, and
rich's fallback of 80 columns split run ids, host names and commands over several lines; so
there the width is unlimited (`PIPE_WIDTH`) unless `$COLUMNS` says otherwise, and each line is
printed whole, for the log viewer to wrap.
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console

__all__ = ["PIPE_WIDTH", "console"]

PIPE_WIDTH = 100_000
"""The width of output that is not a terminal: in practice, no wrapping."""


def console(*, stderr: bool = False, **kwargs: Any) -> Console:
    """A `Console` on stdout (or stderr) that wraps only on a terminal or at `$COLUMNS`."""
    con = Console(stderr=stderr, highlight=False, **kwargs)
    if not con.is_terminal and not os.environ.get("COLUMNS", "").strip().isdigit() and "width" not in kwargs:
        con.width = PIPE_WIDTH
    return con
