"""Deploy locks in the shared state backend: one object per fleet, `locks/<fleet>.json`.

Taken with `If-None-Match: *` (exactly one of two racing runs creates it), changed only with
`If-Match` on the version read. The record names the holder (user, run id, playbook, pid and
machine, the CI runner or job, since when) and holds a lease per part of the run
(`holders: {part: expires}`), each renewed every `ttl / 3` seconds while its part lives. A run
that dies without releasing (SIGKILL, a lost runner) leaves leases that expire after `ttl`
seconds (default 120, `PLAYBOOK_LOCK_TTL`); an expired lock is taken over by the next run.
`break_lock` removes a lock whoever holds it (`playbook lock break`).

A sharded run holds the lock from its first shard to the end of its coordinator, so no other run
deploys between the shards and the steps that run once. A shard joins (a read and a conditional
write: its lease); one that ends ok leaves its lease in place, no longer renewed, and sends
nothing; one that fails or is interrupted takes its lease out at once (its resume can start
right away; the last part out deletes the lock). The coordinator, which runs only once every
shard ended ok, joins by replacing the shards' leases with its own and deletes the lock at its
end. An unsharded run creates the lock and deletes it: two requests. A shard: two. The
coordinator: three. Without a coordinator, the lock lapses `ttl` after the last shard ended.
"""

from __future__ import annotations

import copy
import datetime as _dt
import getpass
import os
import re
import socket
import threading
import time
from typing import Any

from engine.errors import LockHeld
from engine.record.state.s3store import Precondition, S3Store, StateError, backoff

__all__ = [
    "S3Lock",
    "lock_status",
    "live_leases",
    "break_lock",
    "runner_name",
    "describe",
    "held_versions",
    "DEFAULT_TTL",
]

DEFAULT_TTL = 120.0
_RETRIES = 20
_KEEP: Any = object()  # a change that leaves the record as it is
# the locks this process holds, by (store, run id, fleet): what a shard's journal end records of them
_HERE: dict[tuple[Any, ...], S3Lock] = {}
_HERE_MUTEX = threading.Lock()


def held_versions(store: S3Store, run_id: str) -> dict[str, dict[str, Any]]:
    """The version of each fleet's lock of run `run_id` this process wrote last: `{fleet:
    {"etag", "record", "at"}}`. A shard's journal end carries it; the coordinator, which reads
    those journals, joins with one conditional write on the newest instead of reading the lock."""
    with _HERE_MUTEX:
        locks = [lock for (where, run, _), lock in _HERE.items() if (where, run) == (_where(store), run_id)]
    out = {}
    for lock in locks:
        with lock._mutex:
            if lock._etag is not None and lock._record is not None:
                out[lock.fleet] = {"etag": lock._etag, "record": copy.deepcopy(lock._record), "at": lock._written_at}
    return out


def _where(store: S3Store) -> tuple[Any, ...]:
    return (store.url.endpoint_url, store.url.bucket, store.url.prefix)


def runner_name() -> str:
    """Which CI runner or job this is: GitLab's job URL or runner, a Kubernetes pod, or the host."""
    env = os.environ
    for key in ("CI_JOB_URL", "CI_RUNNER_DESCRIPTION", "HOSTNAME"):
        if env.get(key):
            return env[key]
    return socket.gethostname()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return str(os.getuid())


def _name(fleet: str) -> str:
    return f"locks/{re.sub(r'[^A-Za-z0-9_.-]', '_', fleet).lstrip('.') or 'fleet'}.json"


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def describe(rec: dict[str, Any], now: float | None = None) -> str:
    """`alice (run 3f2a…, playbook deploy.yml, pid 42 on deploy1, runner <job url>) since
    2026-12-02T15:40:00Z (3m12s)`."""
    now = time.time() if now is None else now
    since = float(rec.get("since", now) or now)
    iso = _dt.datetime.fromtimestamp(since, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"{rec.get('owner', 'unknown')} (run {rec.get('run_id', 'unknown')}, playbook {rec.get('playbook', 'unknown')}, "
        f"pid {rec.get('pid', 0)} on {rec.get('host', 'unknown')}, runner {rec.get('runner', 'unknown')}) "
        f"since {iso} ({_age(max(0.0, now - since))})"
    )


class S3Lock:
    """The deploy lock of one fleet for one part of a run. `acquire()`, then `release()`;
    a daemon thread renews the lease in between."""

    def __init__(
        self,
        store: S3Store,
        fleet: str,
        *,
        run_id: str,
        part: str,
        playbook: str,
        ttl: float | None = None,
        coordinator: bool = False,
        version: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.name = _name(fleet)
        self.run_id = run_id
        self.part = part
        self.playbook = playbook
        self.ttl = ttl if ttl is not None else float(os.environ.get("PLAYBOOK_LOCK_TTL", DEFAULT_TTL))
        self._etag: str | None = None
        self._record: dict[str, Any] | None = None  # what our last write stored (its ETag: _etag)
        self._written_at = 0.0
        self._version = version  # a version of the lock its shards wrote last (`held_versions`)
        self._alone = False  # our last write held only our lease: release is one conditional delete
        self.shared = part != "run"  # a part of a sharded run shares the lock with its siblings
        self.coordinator = coordinator  # the run's last part: every shard ended ok before it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def _fresh(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "owner": _user(),
            "playbook": self.playbook,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "runner": runner_name(),
            "since": time.time(),
            "holders": {self.part: self._lease()},
        }

    def _lease(self) -> dict[str, Any]:
        return {
            "expires": time.time() + self.ttl,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "runner": runner_name(),
        }

    def acquire(self) -> None:
        """Take the lock (or join this run's), or raise `LockHeld` naming the holder."""
        self.store.self_test()
        with self._mutex:
            if self.shared:  # its siblings may hold it already: read first (2 requests either way)
                known = self._version
                first = (known["record"], known["etag"]) if known and known.get("etag") else None
                self._update(self._join, first=first)  # the coordinator: one write on its shards' version
            else:
                try:
                    self._wrote(self.store.put(self.name, fresh := self._fresh(), if_absent=True), fresh)
                    self._alone = True
                except Precondition:
                    self._update(self._join)
        with _HERE_MUTEX:
            _HERE[(_where(self.store), self.run_id, self.fleet)] = self
        self._thread = threading.Thread(target=self._renew_loop, name=f"playbook-lease-{self.fleet}", daemon=True)
        self._thread.start()

    def _join(self, rec: dict[str, Any] | None) -> dict[str, Any] | None:
        now = time.time()
        if rec is None:
            return self._fresh()
        live = _live(rec, now)
        if rec.get("run_id") == self.run_id and self.part not in live:
            # the coordinator ends the run: the shards' leases (they ended ok) make way for its own
            rec["holders"] = {self.part: self._lease()} if self.coordinator else {**live, self.part: self._lease()}
            return rec
        if rec.get("run_id") == self.run_id:
            lease = live[self.part]
            raise LockHeld(
                f"deploy lock {self.store.where(self.name)} (fleet '{self.fleet}'): part {self.part} of run "
                f"{self.run_id} is already running (pid {lease.get('pid')} on {lease.get('host')}, runner "
                f"{lease.get('runner')}, lease for {_age(float(lease.get('expires', now)) - now)} more; a shard that "
                f"ended ok keeps its lease until the coordinator ends the run); if it died, "
                f"break the lock with 'playbook lock break' or wait for the lease to end",
                path=self.fleet,
            )
        if not live:  # every lease expired: its holder is gone
            return self._fresh()
        raise LockHeld(
            f"deploy lock {self.store.where(self.name)} (fleet '{self.fleet}') is held by {describe(rec, now)}; "
            f"wait for it to finish, or break a stale lock with 'playbook lock break'",
            path=self.fleet,
        )

    def _wrote(self, etag: str | None, record: dict[str, Any] | None) -> None:
        self._etag, self._record, self._written_at = etag, record, time.time()

    def _update(self, change: Any, *, first: tuple[dict[str, Any], str] | None = None) -> None:
        """Read, change, write back with If-Match (create with If-None-Match); retried on a lost
        race. `first`: a version (record, ETag) to try the first write on without reading."""
        for attempt in range(_RETRIES):
            got = (copy.deepcopy(first[0]), first[1]) if first and attempt == 0 else self.store.get(self.name)
            rec, etag = got if got is not None else (None, None)
            new = change(rec)
            if new is _KEEP:
                return
            self._alone = new is not None and set(new.get("holders") or {}) == {self.part}
            try:
                if new is None:
                    if etag is not None:
                        self.store.delete(self.name, if_match=etag)
                    self._wrote(None, None)
                elif etag is None:
                    self._wrote(self.store.put(self.name, new, if_absent=True), new)
                else:
                    self._wrote(self.store.put(self.name, new, if_match=etag), new)
                return
            except Precondition:
                if not (first and attempt == 0):  # a guessed version that is gone: read at once
                    backoff(attempt)
        raise StateError(
            f"deploy lock {self.store.where(self.name)}: too much contention (gave up after {_RETRIES} tries)"
        )

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except Exception:  # a failed renewal is retried next period; the lease outlives one miss
                pass

    def renew(self) -> None:
        with self._mutex:
            if self._stop.is_set():
                return

            def extend(rec: dict[str, Any] | None) -> dict[str, Any] | None:
                if rec is None or rec.get("run_id") != self.run_id:  # broken by an operator: do not retake
                    self._stop.set()
                    return _KEEP
                rec["holders"] = {**dict(rec.get("holders") or {}), self.part: self._lease()}
                return rec

            self._update(extend)

    def release(self, *, ended_ok: bool = False) -> None:
        """Drop this part's lease; the last part deletes the lock. Never removes another run's.
        A shard that `ended_ok` keeps its lease (not renewed any more): the run goes on with
        the coordinator, which deletes the lock."""
        self._stop.set()
        if ended_ok and self.shared and not self.coordinator:
            return
        with _HERE_MUTEX:
            _HERE.pop((_where(self.store), self.run_id, self.fleet), None)
        with self._mutex:
            if self._etag is not None and self._alone:
                try:  # the common case: nobody touched it since our last write
                    self.store.delete(self.name, if_match=self._etag)
                    self._wrote(None, None)
                    return
                except Precondition:
                    pass

            def leave(rec: dict[str, Any] | None) -> dict[str, Any] | None:
                if rec is None or rec.get("run_id") != self.run_id:
                    return _KEEP
                holders = {p: e for p, e in _live(rec, time.time()).items() if p != self.part}
                if not holders:
                    return None
                rec["holders"] = holders
                return rec

            self._update(leave)


def _live(rec: dict[str, Any], now: float) -> dict[str, dict[str, Any]]:
    """The leases of `rec` that have not expired, by part."""
    found = rec.get("holders")
    holders: dict[str, Any] = found if isinstance(found, dict) else {}
    return {
        str(p): dict(lease)
        for p, lease in holders.items()
        if isinstance(lease, dict) and float(lease.get("expires", 0) or 0) > now
    }


def live_leases(rec: dict[str, Any], now: float | None = None) -> dict[str, dict[str, Any]]:
    """The leases of a lock record that have not expired, by part."""
    return _live(rec, time.time() if now is None else now)


def lock_status(store: S3Store, fleet: str) -> dict[str, Any] | None:
    got = store.get(_name(fleet))
    return got[0] if got else None


def break_lock(store: S3Store, fleet: str) -> dict[str, Any] | None:
    """Remove the fleet's lock whoever holds it; returns the record removed (None: it was free)."""
    got = store.get(_name(fleet))
    if got is None:
        return None
    store.delete(_name(fleet))
    return got[0]
