"""The controller's child processes (rsync, ssh, git, local commands), kept out of the terminal's
reach and never outliving the run.

A terminal's Ctrl-C sends SIGINT to its whole foreground process group. Children started the
ordinary way are in that group and die at once: every in-flight rsync fails, its host is
reported unreachable, although the engine itself only asked to stop starting new work. So every
child runs in a session of its own (`start_new_session`): SIGINT from the terminal reaches
playbook alone, and in-flight steps finish as they would after `kill -INT <playbook>`.

Outside the terminal's group, nothing kills them on the user's behalf any more, so the engine
does it:

- a second interrupt (`abort`) kills every live child's process group at once; in the threads
  doing a step's work (`step_scope`) it makes `check_abort` raise in long loops (artifact
  downloads) and kills any child started afterwards, so the run ends within moments. Work
  outside a step (releasing the deploy locks after the run) is not cut off;
- on Linux each child asks for SIGKILL when the thread that started it dies
  (`PR_SET_PDEATHSIG`), which covers playbook itself being SIGKILLed; a child's own children
  (rsync's ssh) see their pipes close and exit. util-linux's `setpriv --pdeathsig KILL` asks
  for it and then executes the child (the setting survives exec), so Python can start it with
  vfork; a `preexec_fn` doing the same would make every start a full fork of the controller,
  ~3× the cost, holding the GIL while it copies the page tables. Without `setpriv` the
  `preexec_fn` is the fallback;
- at interpreter exit every child still running is killed (`kill_all`, registered with atexit).

`abort` runs in a signal handler: it touches the registry only with single dict operations and
takes no lock, so it cannot deadlock with a thread that is starting a child.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "Aborted",
    "popen",
    "forget",
    "kill_group",
    "run",
    "kill_all",
    "abort",
    "step_scope",
    "check_abort",
    "reset_abort",
]

_PR_SET_PDEATHSIG = 1

_live: dict[int, subprocess.Popen[Any]] = {}
_abort = threading.Event()
_scope = threading.local()


class Aborted(KeyboardInterrupt):
    """Raised by `check_abort` (and by a child killed by `abort`) once the run was aborted."""


def _death_signal() -> Callable[[], Any] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def set_pdeathsig() -> None:
        # runs in the child between fork and exec: one C call, no Python-level locks
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return set_pdeathsig


_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None
_PREEXEC = None if _SETPRIV else _death_signal()


def _found(program: str, kwargs: Mapping[str, Any]) -> None:
    """Raise FileNotFoundError as Popen would when `program` cannot be found (setpriv would
    otherwise report it as its own exit status)."""
    if "/" in program:
        where = os.path.join(kwargs.get("cwd") or "", program)
        if os.path.exists(where):
            return
    else:
        env = kwargs.get("env")
        path = (env if env is not None else os.environ).get("PATH", os.defpath)
        if shutil.which(program, path=path):
            return
    raise FileNotFoundError(errno.ENOENT, f"No such file or directory: {program!r}", program)


def popen(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """`subprocess.Popen` in a new session, killed with playbook, tracked until `forget`."""
    kwargs.setdefault("start_new_session", True)
    args = list(argv)
    if _SETPRIV and "preexec_fn" not in kwargs and args:
        _found(args[0], kwargs)
        proc: subprocess.Popen[Any] = subprocess.Popen([_SETPRIV, "--pdeathsig", "KILL", "--", *args], **kwargs)
        proc.args = args  # what was asked for, in messages
    else:
        if _PREEXEC is not None:
            kwargs.setdefault("preexec_fn", _PREEXEC)
        proc = subprocess.Popen(args, **kwargs)
    _live[proc.pid] = proc
    if _cancelled():  # the step was aborted while this started: it must not run on
        _kill_group(proc)
    return proc


def forget(proc: subprocess.Popen[Any]) -> None:
    """The child was waited for: stop tracking it (its group is no longer ours to kill)."""
    _live.pop(proc.pid, None)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the child's whole process group (it and what it started), then reap it."""
    _kill_group(proc)
    try:
        proc.communicate()
    except (OSError, ValueError):
        pass
    forget(proc)


def run(
    argv: Sequence[str],
    *,
    input: bytes | str | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    text: bool = False,
    stdin: int | None = None,
    keep: int | None = None,
) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run(capture_output=True)` through `popen`. On timeout the child's whole group
    is killed (not just the child: `sh -c 'sleep 9'` leaves no `sleep` behind) and
    `subprocess.TimeoutExpired` raised. `keep` (bytes, not with `text`): at most this much of
    each output stream is kept, the rest read and dropped; the result's `dropped` counts it."""
    proc = popen(
        list(argv),
        stdin=subprocess.PIPE if input is not None else (stdin if stdin is not None else subprocess.DEVNULL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        text=text,
    )
    dropped = 0
    try:
        if keep is None or text:
            out, err = proc.communicate(input, timeout=timeout)
        else:
            out, err, dropped = _communicate_bounded(proc, input, timeout, keep)
    except BaseException:  # a timeout, or an abort while it ran
        kill_group(proc)
        raise
    finally:
        forget(proc)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    done.dropped = dropped  # type: ignore[attr-defined]
    return done


def _communicate_bounded(
    proc: subprocess.Popen[Any], data: bytes | str | None, timeout: float | None, keep: int
) -> tuple[bytes, bytes, int]:
    """`proc.communicate(data, timeout)` keeping at most `keep` bytes of stdout and of stderr:
    the rest is read and counted, so a child that prints without end costs no memory."""
    deadline = None if timeout is None else time.monotonic() + timeout
    kept, dropped = [bytearray(), bytearray()], [0, 0]

    def drain(i: int, stream: Any) -> None:
        fd = stream.fileno()
        while chunk := os.read(fd, 65536):
            room = keep - len(kept[i])
            if room > 0:
                kept[i] += chunk[:room]
            dropped[i] += len(chunk) - max(0, min(room, len(chunk)))

    def feed() -> None:
        try:
            if data:
                proc.stdin.write(data.encode() if isinstance(data, str) else data)  # type: ignore[union-attr]
        except OSError:  # the child exited without reading it all
            pass
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]

    threads = [
        threading.Thread(target=drain, args=(i, s), daemon=True) for i, s in enumerate((proc.stdout, proc.stderr))
    ]
    if proc.stdin is not None:
        threads.append(threading.Thread(target=feed, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            raise subprocess.TimeoutExpired(proc.args, timeout or 0)
    proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
    for stream in (proc.stdout, proc.stderr):
        stream.close()  # type: ignore[union-attr]
    return bytes(kept[0]), bytes(kept[1]), dropped[0] + dropped[1]


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the pid is ours until reaped, so is its group id
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except OSError:
            pass


def kill_all() -> None:
    """SIGKILL every live child's process group. Safe in a signal handler."""
    for proc in list(_live.values()):
        _kill_group(proc)


def abort() -> None:
    """The run is aborted (a second interrupt): kill every child, make `check_abort` raise."""
    _abort.set()
    kill_all()


@contextlib.contextmanager
def step_scope() -> Iterator[None]:
    """The current thread does a step's work: an abort cuts it off (see the module docstring)."""
    _scope.active = True
    try:
        yield
    finally:
        _scope.active = False


def _cancelled() -> bool:
    return _abort.is_set() and getattr(_scope, "active", False)


def check_abort() -> None:
    """Raise `Aborted` once the run was aborted, in a step's work; long loops (downloads) call
    it per chunk."""
    if _cancelled():
        raise Aborted("aborted by a second interrupt")


def reset_abort() -> None:
    """Forget an earlier abort (a new run in the same process, e.g. tests calling `main`)."""
    _abort.clear()


atexit.register(kill_all)
