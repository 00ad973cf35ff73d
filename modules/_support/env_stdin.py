"""Environment variables for a host command that never appear in any process's arguments.

Over SSH a command is one string the host's shell parses, so `env TOKEN=... cmd` would put the
value in the argv of the remote shell, readable by every user of the host in
`/proc/<pid>/cmdline` (`ps`). Here only the *names* travel in argv; the values go first on the
command's standard input, one per line, and a small POSIX shell prologue on the host reads them
into its environment (`read` is a builtin: no process sees them as arguments) and then `exec`s
the command, which inherits what is left of stdin (the step's own `stdin`).

    argv, stdin = with_env(["deploy-hook"], {"TOKEN": secret}, b"input")
    ctx.run(argv, stdin=stdin)

A value may not contain a newline or a NUL (it could not be read back as one line).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from engine.errors import ArgError
from engine.secrets import Secret

__all__ = ["with_env"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# $1: how many names follow; then the names; then the command. Each value is one line of stdin.
_PROLOGUE = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do IFS= read -r v || exit 125; export "$1=$v"; shift; n=$((n - 1)); done; '
    'unset n v; exec "$@"'
)


def with_env(
    argv: Sequence[str], env: Mapping[str, Any] | None, stdin: bytes | None, *, where: str = ""
) -> tuple[list[str], bytes | None]:
    """(argv, stdin) running `argv` with `env` set, the values carried on stdin before `stdin`."""
    if not env:
        return list(argv), stdin
    names: list[str] = []
    lines: list[bytes] = []
    for name, value in env.items():
        if not _NAME.match(str(name)):
            raise ArgError(f"'env': variable name must match [A-Za-z_][A-Za-z0-9_]* (got {name!r})", path=where)
        text = value.reveal() if isinstance(value, Secret) else str(value)
        if "\n" in text or "\0" in text:
            raise ArgError(f"'env.{name}': a value may not contain a newline or NUL", path=where)
        names.append(str(name))
        lines.append(text.encode() + b"\n")
    return ["/bin/sh", "-c", _PROLOGUE, "sh", str(len(names)), *names, *argv], b"".join(lines) + (stdin or b"")
