"""A real terminal for a command: a tmux pane, so that Ctrl-C is the terminal's own SIGINT.

`kill -INT PID` reaches one process; Ctrl-C in a terminal reaches the whole foreground process
group, children included. `Terminal` starts a command in a detached tmux pane on a private
server (its own socket), in the pane's foreground process group as a shell would, with stdout
and stderr sent to files, and `ctrl_c()` types Ctrl-C into the pane (`tmux send-keys C-c`): the
pane's tty sends SIGINT to its foreground group, exactly as an operator's terminal does. A small
supervisor in the pane (ignoring SIGINT itself) records the command's pid and exit status.

    with Terminal(tmp_path) as term:
        term.start([sys.executable, "-m", "engine.cli", "run", ...], env=env)
        wait_for(lambda: started.exists())
        term.ctrl_c()
        assert term.wait() == 130

Waiting is always for an event (a file appearing, a line printed, the pane's program exiting),
polled, with a generous timeout that fails loudly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["Terminal", "wait_for", "tmux_available"]

# the pane's program: forks the command (stdout/stderr to files; it stays in the pane's
# foreground process group, so Ctrl-C reaches it as it would from a shell), records its pid, and
# writes its exit status to a file when it ends (as a shell reports it: 128+N for signal N)
_SUPERVISE = (
    "import os, signal, sys\n"
    "out, err, pidfile, statusfile = sys.argv[1:5]\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    for fd, path in ((1, out), (2, err)):\n"
    "        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)\n"
    "    os.execvp(sys.argv[5], sys.argv[5:])\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "open(pidfile + '.tmp', 'w').write(str(pid)); os.rename(pidfile + '.tmp', pidfile)\n"
    "code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])\n"
    "open(statusfile + '.tmp', 'w').write(str(code if code >= 0 else 128 - code))\n"
    "os.rename(statusfile + '.tmp', statusfile)\n"
)


def tmux_available() -> bool:
    return shutil.which("tmux") is not None


def wait_for(cond: Callable[[], object], *, timeout: float = 120.0, what: str = "the condition") -> object:
    """Poll `cond` until it is true; fail loudly after `timeout` (a harness bound, not a timing)."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


class Terminal:
    """One command in a detached tmux pane on a private tmux server."""

    def __init__(self, workdir: Path) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        # a short path of its own: a unix socket's path is limited to 107 bytes
        self._sockdir = tempfile.mkdtemp(prefix="pb-tmux-", dir="/tmp")
        self.socket = os.path.join(self._sockdir, "sock")
        self.out = self.dir / "stdout"
        self.err = self.dir / "stderr"
        self.pidfile = self.dir / "pid"
        self.statusfile = self.dir / "status"
        conf = self.dir / "tmux.conf"
        conf.write_text("set -g remain-on-exit on\nset -g history-limit 10000\n")
        self.conf = str(conf)
        self._started = False

    def _tmux(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        proc = subprocess.run(
            ["tmux", "-S", self.socket, "-f", self.conf, *args],
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"tmux {args[0]} failed: {proc.stderr.strip()}")
        return proc.stdout

    def start(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None) -> None:
        """Run `argv` in the pane; the server (and so the pane) gets `env` as its environment."""
        full = dict(os.environ if env is None else env)
        full.setdefault("TERM", "xterm")
        files = (self.out, self.err, self.pidfile, self.statusfile)
        cmd = [sys.executable, "-c", _SUPERVISE, *map(str, files), *argv]
        self._tmux("new-session", "-d", "-s", "t", "-x", "160", "-y", "48", "-c", cwd or os.getcwd(), *cmd, env=full)
        self._started = True

    def pid(self) -> int:
        """The command's pid (it runs in the pane's foreground process group)."""
        wait_for(self.pidfile.exists, timeout=60, what="the command to start")
        return int(self.pidfile.read_text())

    def ctrl_c(self) -> None:
        """Type Ctrl-C: the tty sends SIGINT to the pane's foreground process group."""
        self._tmux("send-keys", "-t", "t", "C-c")

    def exited(self) -> int | None:
        """The command's exit status once it ended (128+N when killed by signal N), else None."""
        return int(self.statusfile.read_text()) if self.statusfile.exists() else None

    def until(self, cond: Callable[[], object], *, what: str, timeout: float = 120.0) -> object:
        """`wait_for(cond)`, failing at once (with the command's output) if the command exits first."""

        def check() -> object:
            got = cond()
            if not got and self.exited() is not None and not cond():
                raise AssertionError(
                    f"the command exited ({self.exited()}) before {what}:\n{self.stdout()}\n{self.stderr()}"
                )
            return got

        return wait_for(check, timeout=timeout, what=what)

    def wait(self, timeout: float = 120.0) -> int:
        """The command's exit status, once it exited."""
        try:
            wait_for(lambda: self.exited() is not None, timeout=timeout, what="the command to exit")
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.stdout()}\n{self.stderr()}") from None
        code = self.exited()
        assert code is not None
        return code

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def close(self) -> None:
        if self._started:
            pid = int(self.pidfile.read_text()) if self.pidfile.exists() else 0
            if pid and self.exited() is None:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=60)
            self._started = False
        shutil.rmtree(self._sockdir, ignore_errors=True)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
