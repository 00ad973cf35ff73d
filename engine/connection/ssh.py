"""The `ssh` connection: paramiko, one Transport per host, strict host keys.

Why `paramiko.Transport` and not `SSHClient`: `SSHClient.load_host_keys` re-parses known_hosts for
every connection (at 200 hosts that turns a ~2 s fan-out into ~12 s), and SSHClient leaves
Nagle's algorithm on, which costs ~40 ms per command on loopback (delayed-ACK interplay). Here
known_hosts is parsed once per run (`KnownHosts`) and the socket is ours (engine/connection/tcp.py:
no Nagle, and no delayed ACKs to wait on the server's Nagle).

Host keys: an unknown or changed key is refused; there is no other policy. Lookups are
port-aware like OpenSSH (`[addr]:port` unless the port is 22) and also try the inventory name.

Commands go through the remote user's login shell, which must be POSIX: each argv part is quoted
with `shlex.quote`. Environment variables are passed as an `env K=V ...` prefix, so their
values are visible in the remote process list - secrets must travel on stdin (modules do it with
modules/_support/env_stdin.py), never in this `env`.

No paramiko or socket exception leaves this module: they become `ConnectionFailed`
(`HostKeyError` for host keys), `CommandTimeout` or `ModuleError`.

Over 400 lines as one idea: one paramiko transport from connect to close, and the channel I/O of the
commands on it.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shlex
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence

from engine.connection._paramiko import paramiko
from engine.connection.base import MAX_OUTPUT, CommandResult
from engine.connection.keys import KnownHosts, host_key_names, load_private_key
from engine.connection.tcp import open_tcp
from engine.errors import CommandTimeout, ConnectionFailed, HostKeyError, ModuleError
from engine.model.config import Host

__all__ = ["SSHConnection", "build_command"]

_DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_GET_MISSING_RC = 44  # `cat` only exits 0 or 1, so this cannot be a read error
_READ_CHUNK = 1 << 16
_POLL_SECONDS = 1.0  # paramiko's 0.1: see engine/connection/tcp.py
_P256, _X25519 = "ecdh-sha2-nistp256", "curve25519-sha256@libssh.org"

# OpenSSH's default MaxSessions is 10 channels per connection, and a closed channel's slot is
# freed only once the server has processed our CLOSE: with N commands in flight, up to N more
# slots may still be draining, so 5 keeps us at the server's 10. Should a server allow fewer
# (or keep a slot for a timed-out command that still runs), opening a session is retried.
MAX_SESSIONS = 5
_SESSION_RETRY_SECONDS = 10.0

_PUT_SCRIPT = (
    "umask 077; "
    'if [ -d "$1" ]; then echo "$1: is a directory" >&2; exit 1; fi; '
    't=$(mktemp "$(dirname -- "$1")/.playbook-XXXXXX") || exit 1; '
    'if cat > "$t"{chmod} && mv -f -- "$t" "$1"; then exit 0; fi; '
    'rm -f -- "$t"; exit 1'
)
_GET_SCRIPT = f'[ -e "$1" ] || exit {_GET_MISSING_RC}; exec cat -- "$1"'


# -- command building ------------------------------------------------------------------------


def build_command(
    argv: Sequence[str] | str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    shell: bool = False,
) -> str:
    """The one string sent to the remote shell for `argv` (every part quoted).

    `shell=True` takes a string and runs it with `/bin/sh -c`; `env` becomes an `env K=V`
    prefix (visible in the remote process list: no secrets); `cwd` becomes `cd DIR && `.
    """
    if shell:
        if not isinstance(argv, str):
            raise TypeError("shell=True takes one command string")
        cmd = "/bin/sh -c " + shlex.quote(argv)
    else:
        if isinstance(argv, str):
            raise TypeError("argv must be a list of strings; pass shell=True for a shell string")
        parts = list(argv)
        if not parts:
            raise ValueError("'argv' must not be empty (got [])")
        for p in parts:
            if not isinstance(p, str):
                raise TypeError(f"argv items must be str (got {type(p).__name__}: {p!r})")
        cmd = shlex.join(parts)
    if env:
        assigns = []
        for k, v in env.items():
            if not _ENV_NAME.match(k):
                raise ValueError(f"environment variable name must match [A-Za-z_][A-Za-z0-9_]* (got {k!r})")
            assigns.append(shlex.quote(f"{k}={v}"))
        cmd = "env " + " ".join(assigns) + " " + cmd
    if cwd:
        cmd = f"cd {shlex.quote(cwd)} && {cmd}"
    return cmd


# -- the connection --------------------------------------------------------------------------


class SSHConnection:
    """A `Connection` to one host over one paramiko Transport, reused for every command.

    `open()` connects, verifies the host key against `known_hosts` and authenticates with the
    host's key file (or ssh-agent keys, then ~/.ssh/id_* when no key is set). Each `run` opens
    its own session channel, so several commands may run at once on one host (up to
    `MAX_SESSIONS`; more wait). If the transport has died between commands, the next command
    reconnects once; a command in flight when the link drops fails with `ConnectionFailed`.
    """

    def __init__(self, host: Host, known_hosts: KnownHosts, *, connect_timeout: float = 10.0) -> None:
        self.host = host.name
        self.spec = host
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout
        self.user = host.user or getpass.getuser()
        self._transport: paramiko.Transport | None = None
        self._open_lock = threading.Lock()
        self._sessions = threading.BoundedSemaphore(MAX_SESSIONS)
        self._closed = False

    def __repr__(self) -> str:
        state = "open" if self.is_active else "closed"
        return f"<SSHConnection {self.host} {self.user}@{self._where} {state}>"

    @property
    def _where(self) -> str:
        return f"{self.spec.hostname}:{self.spec.port}"

    @property
    def transport(self) -> paramiko.Transport | None:
        """The live transport (for diagnostics and tests), or None before open()."""
        return self._transport

    @property
    def is_active(self) -> bool:
        t = self._transport
        return t is not None and t.is_active()

    def _fail(self, reason: str, cls: type[ConnectionFailed] = ConnectionFailed, **kw: str) -> ConnectionFailed:
        exc = cls(reason, host=f"{self.host} ({self._where})", **kw)
        exc.host = self.host  # the subject shown in str() carries the address, the field does not
        return exc

    # -- open / close ----------------------------------------------------------------------

    def open(self) -> None:
        """Connect and authenticate (no-op when already connected)."""
        with self._open_lock:
            if self.is_active:
                return
            self._closed = False
            self._transport = self._connect()

    def close(self) -> None:
        with self._open_lock:
            self._closed = True
            t, self._transport = self._transport, None
        if t is not None:
            try:
                t.close()
            except Exception:  # closing a broken transport can raise anything: nothing to report
                pass

    def _connect(self) -> paramiko.Transport:
        addr, port, timeout = self.spec.hostname, self.spec.port, self.connect_timeout
        try:
            sock = open_tcp(addr, port, timeout)
        except socket.gaierror as exc:
            raise self._fail(f"cannot resolve {addr}: {exc.strerror}") from None
        except ConnectionRefusedError:
            raise self._fail("connection refused") from None
        except TimeoutError:
            raise self._fail(f"connect timed out after {timeout:g}s") from None
        except OSError as exc:
            raise self._fail(f"cannot connect: {exc.strerror or exc}") from None
        transport: paramiko.Transport | None = None
        try:
            transport = paramiko.Transport(sock)
            # its thread's reads time out only to notice a close, which now wakes them itself
            sock.settimeout(_POLL_SECONDS)
            transport.banner_timeout = timeout
            transport.auth_timeout = timeout
            _prefer_kex(transport)
            known = self.known_hosts.lookup(host_key_names(self.spec))
            if known:
                self._prefer_key_types(transport, list(known))
            transport.start_client(timeout=timeout)
            if not transport.initial_kex_done:  # start_client gave up at `timeout` before its thread did
                raise self._fail(f"SSH handshake failed: {_unfinished(transport, timeout)}")
            self._check_host_key(transport.get_remote_server_key(), known)
            self._authenticate(transport)
            transport.set_keepalive(30)
            return transport
        except ConnectionFailed:
            _close_quietly(transport, sock)
            raise
        except paramiko.AuthenticationException as exc:
            _close_quietly(transport, sock)
            raise self._fail(f"authentication failed for user {self.user}: {exc}") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            _close_quietly(transport, sock)
            raise self._fail(f"SSH handshake failed: {_handshake_reason(exc, timeout)}") from None

    @staticmethod
    def _prefer_key_types(transport: paramiko.Transport, known_types: list[str]) -> None:
        # offer the key types we know first, as OpenSSH does, so a host that has several host
        # keys presents the one we can verify
        opts = transport.get_security_options()
        current = list(opts.key_types)
        preferred = [t for t in current if t in known_types or t.replace("-cert-v01@openssh.com", "") in known_types]
        opts.key_types = preferred + [t for t in current if t not in preferred]

    def _check_host_key(self, key: paramiko.PKey, known: dict[str, paramiko.PKey]) -> None:
        offered = f"{key.get_name()} {key.fingerprint}"
        if self.known_hosts.is_revoked(key):
            raise self._fail(
                f"host key {offered} is marked @revoked in {self.known_hosts.path}",
                HostKeyError,
                fingerprint=key.fingerprint,
            )
        expected = known.get(key.get_name())
        if expected is None:
            also = f" (known_hosts has {', '.join(sorted(known))} for it)" if known else ""
            raise self._fail(
                f"unknown host key {offered} not in {self.known_hosts.path}{also}; verify it out of band and add it",
                HostKeyError,
                fingerprint=key.fingerprint,
            )
        if expected.asbytes() != key.asbytes():
            raise self._fail(
                f"host key CHANGED: offered {offered}, known_hosts {self.known_hosts.path} has "
                f"{expected.get_name()} {expected.fingerprint}; this may be an attack (or the host "
                "was reinstalled): verify out of band and replace the entry",
                HostKeyError,
                fingerprint=key.fingerprint,
            )

    def _authenticate(self, transport: paramiko.Transport) -> None:
        tried: list[str] = []
        if self.spec.key:
            keys: list[tuple[str, paramiko.PKey]] = [(self.spec.key, load_private_key(self.spec.key, host=self.host))]
        else:
            keys = self._fallback_keys()
            if not keys:
                raise self._fail("no 'key' set for the host, no ssh-agent keys and no ~/.ssh/id_* file")
        last: Exception | None = None
        for label, key in keys:
            tried.append(label)
            try:
                transport.auth_publickey(self.user, key)
            except paramiko.AuthenticationException as exc:
                last = exc
                continue
            if transport.is_authenticated():
                return
        raise self._fail(
            f"authentication failed for user {self.user} with {', '.join(tried)}"
            + (f": {last}" if last and str(last) else "")
        )

    def _fallback_keys(self) -> list[tuple[str, paramiko.PKey]]:
        keys: list[tuple[str, paramiko.PKey]] = []
        try:
            agent = paramiko.Agent()
            keys += [(f"agent key {k.get_name()} {k.fingerprint}", k) for k in agent.get_keys()]
        except (paramiko.SSHException, OSError):
            pass
        for path in _DEFAULT_IDENTITIES:
            if os.path.exists(os.path.expanduser(path)):
                try:
                    keys.append((path, load_private_key(path, host=self.host)))
                except ConnectionFailed:
                    continue  # an encrypted default key is simply skipped, as OpenSSH would prompt
        return keys

    def _live_transport(self) -> paramiko.Transport:
        if self._closed:
            raise self._fail("connection is closed")
        t = self._transport
        if t is None or not t.is_active():
            self.open()
            t = self._transport
        assert t is not None
        return t

    # -- commands --------------------------------------------------------------------------

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
        """Run a command; a non-zero exit is a result, not an exception."""
        command = build_command(argv, env=env, cwd=cwd, shell=shell)
        return self._exec(command, stdin=stdin, timeout=timeout, label=_label(argv))

    def _exec(
        self, command: str, *, stdin: bytes | None, timeout: float | None, label: str, whole: bool = False
    ) -> CommandResult:
        command = _stdin_safe(command, stdin is not None)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._sessions:
            transport = self._live_transport()
            chan = self._open_session(transport)
            try:
                return self._drive(chan, command, stdin, deadline, timeout, label, whole)
            finally:
                _close_quietly(chan)

    @contextlib.contextmanager
    def stream(self, command: str, *, label: str) -> Iterator[paramiko.Channel]:
        """A session channel running `command` (a shell string, see `build_command`), for a
        caller that streams its stdin and stdout itself (`engine.connection.relay`); closed on
        exit. Unlike `run`, nothing guards the end of stdin: the caller's command must."""
        with self._sessions:
            chan = self._open_session(self._live_transport())
            try:
                try:
                    chan.exec_command(command)
                except (paramiko.SSHException, EOFError, OSError) as exc:
                    raise self._fail(f"cannot start command {label}: {_reason(exc)}") from None
                yield chan
            finally:
                _close_quietly(chan)

    def _open_session(self, transport: paramiko.Transport) -> paramiko.Channel:
        give_up = time.monotonic() + _SESSION_RETRY_SECONDS
        delay = 0.005
        while True:
            try:
                return transport.open_session(timeout=self.connect_timeout)
            except paramiko.ChannelException as exc:
                # "no more sessions" on the server (MaxSessions); anything else is fatal too
                # once the retry budget is spent
                if time.monotonic() + delay > give_up or not transport.is_active():
                    raise self._fail(f"server refused a new session ({exc.text}); is MaxSessions too low?") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise self._fail(f"cannot open a session: {_reason(exc)}") from None

    def _drive(
        self,
        chan: paramiko.Channel,
        command: str,
        stdin: bytes | None,
        deadline: float | None,
        timeout: float | None,
        label: str,
        whole: bool = False,
    ) -> CommandResult:
        """Run `command` on `chan` and read its output (see `run`). `whole`: the caller wants all
        of it or nothing (`get`): past MAX_OUTPUT the channel is closed and the result, with its
        `dropped` set, is not read further, so an endless `cat` ends."""

        def write_stdin() -> None:
            try:
                if stdin:
                    chan.sendall(stdin)
                chan.shutdown_write()
            except Exception:  # a broken channel: the main thread sees it through the exit status
                return

        # stdout and stderr are read here, in turns, as each has data: one event that both
        # buffers set when fed or closed (no reader thread per command: starting one waits for
        # the GIL, and a 200-host fan-out started 200)
        ready = threading.Event()
        chan.in_buffer.set_event(ready)
        chan.in_stderr_buffer.set_event(ready)
        try:
            chan.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._fail(f"cannot start command {label}: {_reason(exc)}") from None

        in_thread = None
        if stdin is not None:
            # a separate writer: a command that prints before it reads its input must not
            # deadlock against us blocking in sendall
            in_thread = threading.Thread(target=write_stdin, daemon=True, name=f"ssh-stdin-{self.host}")
            in_thread.start()

        out, err = bytearray(), bytearray()
        dropped = 0
        open_streams = [(chan.recv, chan.recv_ready, out), (chan.recv_stderr, chan.recv_stderr_ready, err)]
        try:
            while open_streams:
                ready.clear()
                progressed = False
                for stream in list(open_streams):
                    recv, buffered, sink = stream
                    if not (buffered() or chan.eof_received or chan.closed):
                        continue
                    data = recv(_READ_CHUNK)  # what is buffered, or b"" at the end: never blocks
                    progressed = True
                    if data:
                        room = MAX_OUTPUT - len(sink)
                        sink += data[:room] if room > 0 else b""
                        dropped += max(0, len(data) - max(room, 0))
                        if dropped and whole:
                            return CommandResult(-1, bytes(out), bytes(err), dropped)
                    else:
                        open_streams.remove(stream)
                # a read that empties its buffer clears `ready`: wait only after reading nothing
                if open_streams and not progressed and not ready.wait(_remaining(deadline)):
                    raise TimeoutError()
            if not chan.status_event.wait(_remaining(deadline)):
                raise TimeoutError()
        except TimeoutError:
            _close_quietly(chan)
            raise CommandTimeout(
                f"command timed out after {timeout:g}s: {label}", path=f"{self.host} ({self._where})"
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._fail(f"connection lost during {label}: {_reason(exc)}") from None
        rc = chan.recv_exit_status()
        if rc == -1:
            t = self._transport
            if t is None or not t.is_active():
                raise self._fail(f"connection lost during {label}")
            # the server sent no exit-status: the command was killed by a signal
            rc = 255
        if in_thread is not None:
            in_thread.join(1.0)
        return CommandResult(rc, bytes(out), bytes(err), dropped)

    # -- files -----------------------------------------------------------------------------

    def put(self, path: str, data: bytes, *, mode: int | None = None) -> None:
        """Write `data` to `path` atomically: temp file in the same directory, then `mv -f`.

        Without `mode` the file is created 0600 (like the local connection's mkstemp).
        """
        chmod = "" if mode is None else f' && chmod {mode & 0o7777:04o} "$t"'
        script = _PUT_SCRIPT.format(chmod=chmod)
        res = self._exec(build_command(["sh", "-c", script, "sh", path]), stdin=data, timeout=None, label=f"put {path}")
        if res.rc != 0:
            raise ModuleError(f"cannot write {path}: {_first_line(res.stderr)}", path=self.host)

    def get(self, path: str) -> bytes | None:
        """The file's bytes, or None when it does not exist (other failures raise ModuleError)."""
        res = self._exec(
            build_command(["sh", "-c", _GET_SCRIPT, "sh", path]),
            stdin=None,
            timeout=None,
            label=f"get {path}",
            whole=True,
        )
        if res.dropped:
            raise ModuleError(f"cannot read {path}: it is over {MAX_OUTPUT} bytes", path=self.host)
        if res.rc == _GET_MISSING_RC:
            return None
        if res.rc != 0:
            raise ModuleError(f"cannot read {path}: {_first_line(res.stderr)}", path=self.host)
        return res.stdout


# -- helpers ---------------------------------------------------------------------------------


def _prefer_kex(transport: paramiko.Transport) -> None:
    """Key exchange: a post-quantum hybrid when the server has one, else ECDH on P-256 before
    curve25519 (both 128-bit classical exchanges). OpenSSH up to 9.x (Debian 12 ships 9.2)
    computes curve25519 with its portable reference code and P-256 with OpenSSL's: each
    connection cost the host ~6 ms less CPU with P-256 (sshd 9.2 here, ~36 -> ~30 ms for a
    whole connection that runs `true`). Paramiko's order is kept otherwise."""
    opts = transport.get_security_options()
    kex = list(opts.kex)
    if _P256 in kex and _X25519 in kex and kex.index(_P256) > kex.index(_X25519):
        kex.remove(_P256)
        kex.insert(kex.index(_X25519), _P256)
        opts.kex = kex


def _stdin_safe(command: str, has_stdin: bool) -> str:
    """Wrap a command so the server never closes the channel while we may still send to it.

    paramiko can send a channel's EOF (or stdin data) after the CLOSE that answers the
    server's CLOSE, when the command exits first; OpenSSH then drops the whole connection
    ("packet referred to nonexistent channel", paramiko issues #1115/#1705), failing every
    command in flight on that host. So: without stdin we send no EOF at all (stdin is
    /dev/null); with stdin the remote side drains it to our EOF before exiting, keeping the
    command's exit status.
    """
    if not has_stdin:
        return f"exec </dev/null; {command}"
    return f"{{ {command}\n}}; __pb_rc=$?; cat >/dev/null; exit $__pb_rc"


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def _label(argv: Sequence[str] | str) -> str:
    """A short name for a command in errors: its program, never its arguments (may hold data)."""
    if isinstance(argv, str):
        first = argv.strip().split(" ", 1)[0] if argv.strip() else "sh"
        return f"'{first} ...'" if " " in argv.strip() else f"'{first}'"
    return f"'{argv[0]}'" if argv else "''"


def _first_line(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace").strip()
    return text.splitlines()[-1] if text else "failed with no message"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "connection closed by remote host"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc) or type(exc).__name__
    return text


_NO_BANNER = "no SSH banner ({}; is it an SSH server?)"


def _handshake_reason(exc: BaseException, timeout: float) -> str:
    if not str(exc).startswith("Error reading SSH protocol banner"):
        return _reason(exc)
    # no `SSH-2.0-...` line came: paramiko keeps what stopped its read as the context
    why = exc.__context__
    if isinstance(why, TimeoutError):
        return _NO_BANNER.format(f"none within {timeout:g}s")
    if isinstance(why, EOFError):
        return _NO_BANNER.format("the server closed the connection")
    return _NO_BANNER.format(_reason(why) if why is not None else "none")


def _unfinished(transport: paramiko.Transport, timeout: float) -> str:
    if not transport.remote_version:
        return _NO_BANNER.format(f"none within {timeout:g}s")
    return f"key exchange with {transport.remote_version} not finished within {timeout:g}s"


def _close_quietly(*things: object) -> None:
    """Close channels, transports, sockets; closing something already broken may raise anything."""
    for thing in things:
        if thing is None:
            continue
        try:
            thing.close()  # type: ignore[attr-defined]
        except Exception:  # already broken; the original error is what matters
            pass
