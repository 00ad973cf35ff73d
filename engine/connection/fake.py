"""An in-memory connection for fast unit tests of planning logic.

It keeps a dict of files and answers commands through a handler the test supplies; every
mutating call (`put`, and every `run` that is not a probe) is recorded in `calls`, so a test can
assert that a dry run mutated nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from engine.connection.base import CommandResult
from engine.errors import ConnectionFailed

__all__ = ["FakeConnection"]

Handler = Callable[["FakeConnection", list[str]], CommandResult]


def _default_handler(conn: FakeConnection, argv: list[str]) -> CommandResult:
    if argv[:2] == ["test", "-e"] and len(argv) == 3:
        return CommandResult(0 if argv[2] in conn.files else 1)
    if argv and argv[0] == "true":
        return CommandResult(0)
    if argv and argv[0] == "false":
        return CommandResult(1)
    return CommandResult(0)


class FakeConnection:
    """A host that lives in memory: `files` maps path to bytes, `calls` records mutations."""

    def __init__(
        self,
        host: str = "fake",
        files: Mapping[str, bytes] | None = None,
        handler: Handler | None = None,
        reachable: bool = True,
    ) -> None:
        self.host = host
        self.files: dict[str, bytes] = dict(files or {})
        self.handler = handler or _default_handler
        self.reachable = reachable
        self.calls: list[tuple] = []
        self.commands: list[list[str]] = []
        self.opened = 0

    def open(self) -> None:
        if not self.reachable:
            raise ConnectionFailed(f"cannot connect to {self.host}: unreachable (fake)", host=self.host)
        self.opened += 1

    def run(
        self,
        argv: Sequence[str] | str,
        *,
        stdin: bytes | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        shell: bool = False,
    ) -> CommandResult:
        args = ["/bin/sh", "-c", argv] if isinstance(argv, str) else list(argv)
        self.commands.append(args)
        self.calls.append(("run", tuple(args)))
        return self.handler(self, args)

    def put(self, path: str, data: bytes, *, mode: int | None = None) -> None:
        self.calls.append(("put", path))
        self.files[path] = data

    def get(self, path: str) -> bytes | None:
        return self.files.get(path)

    def close(self) -> None:
        return None
