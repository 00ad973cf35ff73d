"""The `local` connection: commands run as subprocesses of the controller.

Used for controller steps and for the demo inventory, whose "hosts" are directories here.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence

from engine.connection import children
from engine.connection.base import MAX_OUTPUT, CommandResult
from engine.errors import CommandTimeout, ModuleError

__all__ = ["LocalConnection"]


class LocalConnection:
    """Runs argv with `subprocess` on this machine; `put` is temp file + `os.replace`."""

    def __init__(self, host: str = "localhost") -> None:
        self.host = host

    def open(self) -> None:
        return None

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
        if shell:
            if not isinstance(argv, str):
                raise TypeError("shell=True takes one command string")
            args: list[str] = ["/bin/sh", "-c", argv]
        else:
            if isinstance(argv, str):
                raise TypeError("argv must be a list of strings; pass shell=True for a shell string")
            args = list(argv)
        full_env = None
        if env:
            full_env = dict(os.environ)
            full_env.update(env)
        try:
            proc = children.run(  # its own session: a terminal's Ctrl-C is for playbook alone
                args, input=stdin if stdin is not None else b"", timeout=timeout, env=full_env, cwd=cwd, keep=MAX_OUTPUT
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandTimeout(f"command timed out after {timeout:g}s: {args[0]}", path=self.host) from exc
        except FileNotFoundError:
            return CommandResult(127, b"", f"{args[0]}: command not found\n".encode())
        except NotADirectoryError:
            return CommandResult(1, b"", f"{cwd}: not a directory\n".encode())
        return CommandResult(proc.returncode, proc.stdout, proc.stderr, getattr(proc, "dropped", 0))

    def put(self, path: str, data: bytes, *, mode: int | None = None) -> None:
        directory = os.path.dirname(path) or "."
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".playbook-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def get(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_OUTPUT + 1)  # /dev/zero, or a file that grows, ends here
        except FileNotFoundError:
            return None
        if len(data) > MAX_OUTPUT:
            raise ModuleError(f"cannot read {path}: it is over {MAX_OUTPUT} bytes", path=self.host)
        return data

    def close(self) -> None:
        return None
