"""The connection interface every connector implements (SSH, local, in-memory fake).

Commands are argv lists, never concatenated shell strings: connectors that must go through a
remote shell quote each part themselves. Secrets travel on stdin, never in argv.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["MAX_OUTPUT", "CommandResult", "Connection", "ReadOnly"]

MAX_OUTPUT = 64 * 1024 * 1024
"""The most of a command's stdout, and of its stderr, that a connection keeps, in bytes: the rest
is read and dropped (`CommandResult.dropped`), so a command that prints without end (`yes`,
a `journalctl -f`) cannot fill the controller's memory. A probe's listing of ~600,000 files fits."""


@dataclass(frozen=True)
class CommandResult:
    """Exit status and output of one command; `dropped`: bytes of output past `MAX_OUTPUT`."""

    rc: int
    stdout: bytes = b""
    stderr: bytes = b""
    dropped: int = 0

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")


@runtime_checkable
class Connection(Protocol):
    """A way to run commands and move files on one host.

    `run` executes argv (or, with `shell=True`, a single string through `/bin/sh -c`) and never
    raises for a non-zero exit: it returns the result. It raises `ConnectionFailed` when the host
    cannot be reached and `CommandTimeout` when `timeout` (seconds) passes.
    `put` writes a file atomically (temp file in the same directory, then rename).
    `get` returns a file's bytes, or None when it does not exist.
    """

    host: str

    def open(self) -> None: ...

    def run(
        self,
        argv: Sequence[str] | str,
        *,
        stdin: bytes | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        shell: bool = False,
    ) -> CommandResult: ...

    def put(self, path: str, data: bytes, *, mode: int | None = None) -> None: ...

    def get(self, path: str) -> bytes | None: ...

    def close(self) -> None: ...


class ReadOnly:
    """The view of a connection that a module gets while planning: probes only.

    It has no `put`. `probe` runs a command the module declares read-only (a `test -e`, a
    `stat`, a user's `unless:` guard); the engine never hands a plan the writable connection.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.host = conn.host

    def probe(
        self,
        argv: Sequence[str] | str,
        *,
        stdin: bytes | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        shell: bool = False,
    ) -> CommandResult:
        return self._conn.run(argv, stdin=stdin, timeout=timeout, env=env, cwd=cwd, shell=shell)

    def get(self, path: str) -> bytes | None:
        return self._conn.get(path)
