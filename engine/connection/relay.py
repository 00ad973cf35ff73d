"""A local program's remote shell, carried over the engine's open SSH connection.

rsync reaches a host through a remote-shell program (`rsync -e PROGRAM`): it starts PROGRAM with
the host and the remote command as arguments and speaks its protocol over PROGRAM's stdin and
stdout. With OpenSSH as PROGRAM that is a second SSH connection to every host on every deploy:
a process, a key exchange and a login, on both ends (about 35 ms of CPU per host here, on top
of the engine's own connection). A `Relay` is a remote shell that needs none of that:

    rsync <--stdio--> sh: two `cat`s <==two pipes==> engine <==session channel==> host: the command

`Relay.rsh` is a POSIX shell script for `-e`. It writes its arguments to the engine first
(the count, then each argument, NUL-ended), then copies bytes both ways. The engine runs the
command on a new session channel of the host's connection, joining the arguments after the
host name with spaces as ssh does, so the host's shell parses them exactly as it would under ssh.

How it ends, without ever sending on a channel the server has closed (see `ssh._stdin_safe`):
on the host, once the command exits, its shell closes stdout and stderr (the engine sees EOF
and closes the pipe to the script's foreground `cat`, the process rsync waits for) and reads
stdin to its end before exiting with the command's status. The engine ends that stdin when the
program's side is done: its pipe from the script reaches EOF once rsync and both `cat`s exit.
"""

from __future__ import annotations

import os
import shlex
import threading
import time
from typing import TYPE_CHECKING

from engine.errors import ConnectionFailed

if TYPE_CHECKING:
    import paramiko

    from engine.connection.ssh import SSHConnection

__all__ = ["Relay", "guarded"]

_CHUNK = 1 << 16
_FINISH_SECONDS = 30.0
_MAX_HEADER = 1 << 20  # the arguments rsync passes: options, paths, a --rsync-path of up to 32 KB


def guarded(command: str) -> str:
    """`command` wrapped for the host's shell: after it, stdout and stderr close (EOF for the
    engine) and stdin is drained to the engine's EOF; the command's status is the exit status."""
    return f"{{ {command}\n}}; __pb_rc=$?; exec >&- 2>&-; cat >/dev/null; exit $__pb_rc"


class Relay:
    """One remote-shell session for one run of a local program (see the module docstring).

    Use: build the program's argv with `rsh`, start it with `pass_fds=relay.pass_fds`, call
    `start()`, wait for the program, then `finish()`. Afterwards `status` is the host
    command's exit status (None if it never ran), `stderr` what it wrote there, and `error`
    the connection failure that stopped it, if any.
    """

    def __init__(self, conn: SSHConnection) -> None:
        self.conn = conn
        self.status: int | None = None
        self.stderr = bytearray()
        self.error: ConnectionFailed | None = None
        self._down_r, self._down_w = os.pipe()  # engine -> the script -> the program
        self._up_r, self._up_w = os.pipe()  # the program -> the script -> engine
        self._lock = threading.Lock()
        self._chan: paramiko.Channel | None = None
        self._thread: threading.Thread | None = None

    @property
    def pass_fds(self) -> tuple[int, int]:
        """The script's ends of the two pipes: the program must pass them to its children."""
        return (self._down_r, self._up_w)

    @property
    def rsh(self) -> str:
        """The remote-shell command line (`rsync -e`). The pipes are reached as /dev/fd/N, which
        works for any descriptor number (a shell redirection takes only 0-9). A background
        job's stdin is /dev/null in a non-interactive shell, so the program's end is first
        duplicated onto a spare descriptor for the background `cat`."""
        up, down = self._up_w, self._down_r
        spare = next(n for n in range(5, 10) if n not in (up, down))
        script = (
            f'printf "%s\\0" "$#" "$@" >/dev/fd/{up} || exit 255; exec {spare}<&0; '
            f"cat <&{spare} >/dev/fd/{up} & exec cat </dev/fd/{down} {spare}<&-"
        )
        return "sh -c " + shlex.quote(script) + " playbook-relay"

    def start(self) -> None:
        """Call once the program has started: closes the engine's copies of the script's ends
        and starts serving the session."""
        self._close("_down_r")
        self._close("_up_w")
        self._thread = threading.Thread(target=self._serve, name=f"relay-{self.conn.host}", daemon=True)
        self._thread.start()

    def finish(self, timeout: float | None) -> None:
        """Call once the program has exited (or could not start): ends the session, waiting up
        to `timeout` seconds for the host command's exit status, and closes every pipe."""
        self._close("_down_w")  # the foreground `cat` ends; the pipe from the script reaches EOF
        self._close("_down_r")
        self._close("_up_w")
        if self._thread is not None:
            # once the program has exited the host's command has finished its work (rsync waits
            # for the host's goodbye): its exit status comes at once unless the link is broken
            self._thread.join(_FINISH_SECONDS if timeout is None else min(timeout, _FINISH_SECONDS))
            if self._thread.is_alive():
                chan = self._chan
                if chan is not None:
                    chan.close()  # unblocks the session thread
                self._thread.join(5.0)
            if self._thread.is_alive():
                return  # still reading the pipe: leave it open rather than close it under a reader
        self._close("_up_r")

    # -- the session thread ------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            header = self._read_header()
            if header is None:  # the program exited without starting its remote shell
                return
            args, rest = header
            command = " ".join(args[1:])  # args[0] is the host name: this connection is the host
            with self.conn.stream(guarded(command), label=f"'{args[1] if len(args) > 1 else ''}'") as chan:
                self._chan = chan
                readers = [
                    threading.Thread(target=fn, args=(chan,), name=f"relay-{self.conn.host}", daemon=True)
                    for fn in (self._copy_down, self._copy_stderr)
                ]
                for t in readers:
                    t.start()
                self._copy_up(chan, rest)
                for t in readers:
                    t.join()
                status = chan.recv_exit_status()  # -1: the channel closed without one
                self.status = None if status == -1 else status
        except ConnectionFailed as exc:
            self.error = exc
        except Exception as exc:  # a broken channel or pipe: reported as the connection's loss
            self.error = ConnectionFailed(
                f"connection lost while relaying: {exc or type(exc).__name__}", host=self.conn.host
            )
        finally:
            self._close("_down_w")
            self._drain_up()

    def _read_header(self) -> tuple[list[str], bytes] | None:
        """The script's arguments and whatever bytes followed them; None at EOF before them."""
        buf = b""
        while True:
            fields = buf.split(b"\0")
            if len(fields) > 1 and fields[0].isdigit():
                want = int(fields[0])
                if len(fields) > want + 1:
                    args = [f.decode("utf-8", "surrogateescape") for f in fields[1 : want + 1]]
                    return args, b"\0".join(fields[want + 1 :])
            if len(buf) > _MAX_HEADER:
                raise ValueError("the remote shell's arguments are too long")
            data = os.read(self._up_r, _CHUNK)
            if not data:
                return None
            buf += data

    def _copy_up(self, chan: paramiko.Channel, first: bytes) -> None:
        data = first
        while True:
            if data:
                chan.sendall(data)
            data = os.read(self._up_r, _CHUNK)
            if not data:
                break
        chan.shutdown_write()

    def _copy_down(self, chan: paramiko.Channel) -> None:
        """Channel -> program, to the channel's EOF. Once the program is gone, what still comes
        is read and dropped, so the host's command is never stuck on a full window."""
        try:
            while True:
                data = chan.recv(_CHUNK)
                if not data:
                    return
                view = memoryview(data)
                while view:
                    with self._lock:  # never a write to a descriptor closed (and reused) meanwhile
                        if self._down_w < 0:
                            break
                        try:
                            written = os.write(self._down_w, view)
                        except OSError:  # the program is gone (EPIPE): its exit is what the caller reports
                            break
                    view = view[written:]
        finally:
            self._close("_down_w")

    def _copy_stderr(self, chan: paramiko.Channel) -> None:
        while True:
            data = chan.recv_stderr(_CHUNK)
            if not data:
                return
            if len(self.stderr) < _MAX_HEADER:
                self.stderr += data

    def _close(self, name: str) -> None:
        """Close one of the four pipe ends once, whichever thread gets there first."""
        with self._lock:
            fd = getattr(self, name)
            setattr(self, name, -1)
        if fd >= 0:
            os.close(fd)

    def _drain_up(self) -> None:
        """After a failure, read the program's side to its end so no writer blocks on a full pipe."""
        deadline = time.monotonic() + 5.0
        try:
            while time.monotonic() < deadline and os.read(self._up_r, _CHUNK):
                pass
        except OSError:
            pass
