"""One open connection per host for a whole run.

The executor asks the pool for a host's connection whenever a step needs it; the first ask opens
it (SSH: connect, verify the host key, authenticate), later asks get the same object. Two
threads asking at once for the same host wait for one open. A host that failed to connect
keeps failing fast with the same `ConnectionFailed`, so one unreachable host costs one
connect timeout per run, not one per step.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from engine.connection.base import Connection
from engine.connection.keys import DEFAULT_KNOWN_HOSTS, KnownHosts
from engine.connection.local import LocalConnection
from engine.connection.ssh import SSHConnection
from engine.errors import ConnectionFailed, PlaybookError
from engine.model.config import Host
from engine.workers import Workers

__all__ = ["ConnectionPool"]


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    conn: Connection | None = None
    error: ConnectionFailed | None = None


class ConnectionPool:
    """Opens connections lazily, one per host name, and closes them all at the end.

    `connection: ssh` hosts get an `SSHConnection`, `connection: local` a `LocalConnection`.
    Each distinct known_hosts path is parsed once (`~/.ssh/known_hosts` when a host sets none).
    """

    def __init__(self, *, connect_timeout: float = 10.0, default_known_hosts: str = DEFAULT_KNOWN_HOSTS) -> None:
        self.connect_timeout = connect_timeout
        self.default_known_hosts = default_known_hosts
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._known: dict[str, KnownHosts | PlaybookError] = {}
        self._known_locks: dict[str, threading.Lock] = {}
        self._warmers: list[Workers] = []
        self._closer: Workers | None = None
        self._closing = threading.Event()

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()

    def get(self, host: Host) -> Connection:
        """The open connection to `host`; raises `ConnectionFailed` (the same one every time)."""
        with self._lock:
            slot = self._slots.setdefault(host.name, _Slot())
        with slot.lock:
            if slot.conn is not None:
                return slot.conn
            if slot.error is not None:
                raise slot.error
            started = time.monotonic()
            try:
                conn = self._open(host)
            except ConnectionFailed as exc:
                exc.seconds = time.monotonic() - started
                slot.error = exc
                raise
            slot.conn = conn
            return conn

    def prewarm(self, hosts: list[Host], *, workers: int) -> None:
        """Open these hosts' connections in the background, `workers` at a time. A failure is
        kept for the host's first `get`, which raises it; a `get` meanwhile waits for the open."""
        if not hosts:
            return
        warmer = Workers(min(workers, len(hosts)), "playbook-connect")
        self._warmers.append(warmer)
        for host in hosts:
            warmer.submit(self._warm, host)
        warmer.shutdown(wait=False)  # its threads end once every host was tried

    def _warm(self, host: Host) -> None:
        if self._closing.is_set():
            return
        try:
            self.get(host)
        except PlaybookError:
            pass

    def known_hosts(self, path: str | None = None) -> KnownHosts:
        """The parsed known_hosts at `path` (default: the pool's default), parsed once."""
        full = os.path.abspath(os.path.expanduser(path or self.default_known_hosts))
        with self._lock:
            lock = self._known_locks.setdefault(full, threading.Lock())
        with lock:
            cached = self._known.get(full)
            if cached is None:
                try:
                    cached = KnownHosts(full)
                except PlaybookError as exc:
                    cached = exc
                self._known[full] = cached
        if isinstance(cached, PlaybookError):
            raise cached
        return cached

    def opened(self) -> dict[str, Connection]:
        """The connections opened so far, by host name (a snapshot)."""
        with self._lock:
            return {name: s.conn for name, s in self._slots.items() if s.conn is not None}

    def release(self, name: str) -> None:
        """Close host `name`'s connection now, in the background: it has nothing left to run.

        Its session ends while the other hosts still work, instead of after the slowest of them
        (each close waits on that host's sshd to take it: ~1 ms of a 200-host run's tail each).
        A later `get` opens it again; a host that failed to connect keeps its error."""
        with self._lock:
            slot = self._slots.get(name)
            if slot is None or slot.conn is None:
                return
            del self._slots[name]
            if self._closer is None:
                self._closer = Workers(1, "playbook-close")
            closer = self._closer
        with slot.lock:
            conn, slot.conn = slot.conn, None
        if conn is not None:
            closer.submit(conn.close)

    def close_all(self) -> None:
        """Close every connection and forget failures; the pool can be used again afterwards."""
        self._closing.set()
        warmers, self._warmers = self._warmers, []
        for warmer in warmers:  # no open may start after this, nor finish unclosed
            warmer.shutdown(wait=True, cancel=True)
        self._closing.clear()
        with self._lock:
            slots, self._slots = self._slots, {}
            closer, self._closer = self._closer, None
        for slot in slots.values():
            with slot.lock:
                conn, slot.conn = slot.conn, None
            if conn is not None:
                conn.close()
        if closer is not None:
            closer.shutdown(wait=True)  # the released ones are closed too when this returns

    def _open(self, host: Host) -> Connection:
        if host.connection in ("local", "kubernetes"):
            # a kubernetes target's steps talk to its API from the controller (ctx.target has the
            # kubeconfig, context and namespace); commands, if any, run here
            conn: Connection = LocalConnection(host.name)
        elif host.connection == "ssh":
            try:
                kh = self.known_hosts(host.known_hosts)
            except PlaybookError as exc:
                raise ConnectionFailed(f"known_hosts unusable: {exc}", host=host.name) from None
            conn = SSHConnection(host, kh, connect_timeout=self.connect_timeout)
        else:
            raise ConnectionFailed(
                f"'connection' must be 'ssh', 'local' or 'kubernetes' (got {host.connection!r})", host=host.name
            )
        conn.open()
        return conn
