"""Deploy locks in the shared state backend: one object per fleet, `locks/<fleet>.json`.

Taken with `If-None-Match: *` (exactly one of two racing runs creates it), replaced only with
`If-Match` on the version read. The record names the holder (user, run id, playbook, pid and
machine, the CI runner or job, since when) and a `token` naming this instance of the lock.
A run that dies without releasing (SIGKILL, a lost runner) leaves leases that expire after
`ttl` seconds (default 120, `PLAYBOOK_LOCK_TTL`); an expired lock is taken over by the next run.
`break_lock` removes a lock whoever holds it (`playbook lock break`).

An unsharded run keeps its lease in the lock record (`holders: {"run": lease}`), renewed every
`ttl / 3` seconds: it creates the lock and deletes it, two requests.

A sharded run holds the lock from its first shard to the end of its coordinator, so no other run
deploys between the shards and the steps that run once. The record says `sharded`, lists the
run's parts, and carries a first lease of its own (`expires`, one TTL after it was made); each
part's lease lives in that part's journal (engine/record/state/s3lease.py), so joining parts
only read the lock. A shard: a create (`If-None-Match: *`), and when a sibling made it first, a
read: at most two requests, whatever the others do. The coordinator: a read, and the delete at
the end of the run. A lock of a sharded run is alive while its own lease or a part's lease under
its token is; another run takes a dead one over only after fencing each of its parts
(`s3lease.fence`). Without a coordinator, the lock lapses a TTL after the last shard ended.
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
import uuid
from typing import Any

from engine.errors import LockHeld
from engine.record.state.s3lease import PartLease, fence, journal_name, lease_of, lease_record, runner_name, unfence
from engine.record.state.s3store import Precondition, S3Store, StateError, backoff

__all__ = [
    "S3Lock",
    "hold",
    "lock_status",
    "live_leases",
    "break_lock",
    "runner_name",
    "describe",
    "DEFAULT_TTL",
]

DEFAULT_TTL = 120.0
_RETRIES = 20
_KEEP: Any = object()  # a change that leaves the record as it is


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
    """The deploy lock of one fleet for one part of a run. `acquire()`, then `release()`; for
    an unsharded run a daemon thread renews the lease in between (a part of a sharded run
    holds its lease in its journal: `s3lease.PartLease`)."""

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
        parts: tuple[str, ...] = (),
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.name = _name(fleet)
        self.run_id = run_id
        self.part = part
        self.playbook = playbook
        self.ttl = ttl if ttl is not None else float(os.environ.get("PLAYBOOK_LOCK_TTL", DEFAULT_TTL))
        self.token = ""  # the token of the lock instance held (a part's lease names it)
        self._etag: str | None = None
        self._record: dict[str, Any] | None = None  # what our last write stored, or the record joined
        self._read_etag: str | None = None
        self._alone = False  # our last write held only our lease: release is one conditional delete
        self.shared = part != "run"  # a part of a sharded run shares the lock with its siblings
        self.coordinator = coordinator  # the run's last part: every shard ended ok before it
        self.parts = tuple(parts) or (part,)  # the parts of the run that may join (fenced on a take-over)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def _fresh(self) -> dict[str, Any]:
        now = time.time()
        rec: dict[str, Any] = {
            "run_id": self.run_id,
            "owner": _user(),
            "playbook": self.playbook,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "runner": runner_name(),
            "since": now,
            "token": uuid.uuid4().hex,
        }
        if self.shared:  # the parts' leases are in their journals; this one covers the first moments
            rec.update(sharded=True, parts=sorted(set(self.parts)), expires=now + self.ttl)
        else:
            rec["holders"] = {self.part: self._lease()}
        return rec

    def _lease(self) -> dict[str, Any]:
        return lease_record(self.ttl)

    def acquire(self) -> None:
        """Take the lock (or join this run's), or raise `LockHeld` naming the holder."""
        self.store.self_test()
        with self._mutex:
            if self.shared:
                self._acquire_shared()
                return
            try:
                self._wrote(self.store.put(self.name, fresh := self._fresh(), if_absent=True), fresh)
                self._alone = True
            except Precondition:
                self._update(self._join)
        self._thread = threading.Thread(target=self._renew_loop, name=f"playbook-lease-{self.fleet}", daemon=True)
        self._thread.start()

    def _acquire_shared(self) -> None:
        """A shard tries to create the lock, and reads it when a sibling was first; the
        coordinator, which comes last, reads first. Joining the run's lock writes nothing."""
        got = self.store.get(self.name) if self.coordinator else None
        for attempt in range(_RETRIES):
            if got is None:
                try:
                    self._wrote(self.store.put(self.name, fresh := self._fresh(), if_absent=True), fresh)
                    return
                except Precondition:
                    got = self.store.get(self.name)
                    if got is None:
                        continue
            rec, etag = got
            if rec.get("run_id") == self.run_id:
                if "run" in (rec.get("holders") or {}):
                    raise self._held(rec, time.time())  # an unsharded run with this run id
                self._wrote(etag, rec)
                return
            self._take_over(rec, etag)
            try:
                self._wrote(self.store.put(self.name, fresh := self._fresh(), if_match=etag), fresh)
                return
            except Precondition:
                backoff(attempt)
                got = self.store.get(self.name)
        raise StateError(
            f"deploy lock {self.store.where(self.name)}: too much contention (gave up after {_RETRIES} tries)"
        )

    def _held(self, rec: dict[str, Any], now: float, lease: dict[str, Any] | None = None) -> LockHeld:
        part = f" (part {lease.get('part')} has a live lease)" if lease and lease.get("part") else ""
        return LockHeld(
            f"deploy lock {self.store.where(self.name)} (fleet '{self.fleet}') is held by {describe(rec, now)}{part}; "
            f"wait for it to finish, or break a stale lock with 'playbook lock break'",
            path=self.fleet,
        )

    def _take_over(self, rec: dict[str, Any], etag: str | None) -> None:
        """Another run's lock: raise `LockHeld` unless it is dead. The parts of a dead sharded
        run are fenced first, so none that joined it just now can still start."""
        now = time.time()
        if not rec.get("sharded"):
            if _live(rec, now):
                raise self._held(rec, now)
            return
        if float(rec.get("expires", 0) or 0) > now:
            raise self._held(rec, now)
        run, token = str(rec.get("run_id", "")), str(rec.get("token", ""))
        parts = sorted(_parts(self.store, rec))
        for part in parts:  # a look first, so a live run is refused without a fence written
            got = self.store.get(journal_name(f"{run}.{part}"))
            lease = lease_of(got[0] if got else None, self.fleet, token, now)
            if lease is not None:
                raise self._held(rec, now, {**lease, "part": part})
        fenced: list[str] = []
        try:
            for part in parts:
                fence(
                    self.store,
                    run,
                    part,
                    self.fleet,
                    token,
                    held=lambda lease, p=part: self._held(rec, now, {**lease, "part": p}),
                )
                fenced.append(part)
        except LockHeld:  # a part claimed its lease meanwhile: the run is alive after all
            for part in fenced:
                unfence(self.store, run, part, token)
            raise

    def _join(self, rec: dict[str, Any] | None) -> dict[str, Any] | None:
        now = time.time()
        if rec is None:
            return self._fresh()
        live = _live(rec, now)
        if rec.get("run_id") == self.run_id and not rec.get("sharded") and self.part not in live:
            rec["holders"] = {**live, self.part: self._lease()}
            return rec
        if rec.get("run_id") == self.run_id and not rec.get("sharded"):
            lease = live[self.part]
            raise LockHeld(
                f"deploy lock {self.store.where(self.name)} (fleet '{self.fleet}'): part {self.part} of run "
                f"{self.run_id} is already running (pid {lease.get('pid')} on {lease.get('host')}, runner "
                f"{lease.get('runner')}, lease for {_age(float(lease.get('expires', now)) - now)} more); if it died, "
                f"break the lock with 'playbook lock break' or wait for the lease to end",
                path=self.fleet,
            )
        if rec.get("run_id") == self.run_id:
            raise self._held(rec, now)
        self._take_over(rec, self._read_etag)
        return self._fresh()

    def _wrote(self, etag: str | None, record: dict[str, Any] | None) -> None:
        self._etag, self._record = etag, record
        self.token = str(record.get("token", "")) if record else ""

    def _update(self, change: Any) -> None:
        """Read, change, write back with If-Match (create with If-None-Match); retried on a lost race."""
        for attempt in range(_RETRIES):
            got = self.store.get(self.name)
            rec, etag = got if got is not None else (None, None)
            self._read_etag = etag
            new = change(copy.deepcopy(rec))
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
            if self._stop.is_set() or self.shared:
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
        A shard leaves the lock to its coordinator (its lease is in its journal); the coordinator
        deletes it, which ends the run."""
        self._stop.set()
        with self._mutex:
            if self.shared:
                if self.coordinator and self._etag is not None:
                    try:
                        self.store.delete(self.name, if_match=self._etag)
                    except Precondition:  # broken and taken since: not ours any more
                        pass
                    self._wrote(None, None)
                return
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


def hold(
    store: S3Store,
    fleets: list[str],
    *,
    run_id: str,
    part: str,
    playbook: str,
    total: int = 0,
    ttl: float | None = None,
) -> list[Any]:
    """Take the locks of `fleets` for one part of run `run_id`: `run` (an unsharded run), a
    shard `s<I>of<N>` (`total` N) or `coord`, and claim a sharded part's lease in its journal
    (its copies running elsewhere are refused there). Returns what to `release(ended_ok=...)`
    at the end, the lease first."""
    parts = (*(f"s{i}of{total}" for i in range(1, total + 1)), "coord") if part != "run" else ()
    taken: list[Any] = []
    try:
        for fleet in fleets:
            lock = S3Lock(
                store,
                fleet,
                run_id=run_id,
                part=part,
                playbook=playbook,
                ttl=ttl,
                coordinator=part == "coord",
                parts=parts,
            )
            lock.acquire()
            taken.append(lock)
        if part != "run" and taken:
            lease = PartLease(store, f"{run_id}.{part}", {lock.fleet: lock.token for lock in taken}, ttl=taken[0].ttl)
            lease.claim()
            taken.insert(0, lease)
    except BaseException:
        for lock in taken:
            if isinstance(lock, S3Lock) and not lock.shared:  # a part leaves its run's lock to the run
                lock.release()
        raise
    return taken


def _parts(store: S3Store, rec: dict[str, Any]) -> set[str]:
    """The parts of the sharded run `rec` names: those it lists and those with a journal."""
    run = str(rec.get("run_id", ""))
    prefix = journal_name(f"{run}.")[: -len(".json")]
    found = {n[len(prefix) : -len(".json")] for n in store.list(prefix) if n.endswith(".json")}
    listed = rec.get("parts")
    return {p for p in found if p} | ({str(p) for p in listed} if isinstance(listed, list) else set())


def _live(rec: dict[str, Any], now: float) -> dict[str, dict[str, Any]]:
    """The leases of `rec` that have not expired, by part."""
    found = rec.get("holders")
    holders: dict[str, Any] = found if isinstance(found, dict) else {}
    return {
        str(p): dict(lease)
        for p, lease in holders.items()
        if isinstance(lease, dict) and float(lease.get("expires", 0) or 0) > now
    }


def live_leases(
    rec: dict[str, Any], now: float | None = None, *, store: S3Store | None = None, fleet: str = ""
) -> dict[str, dict[str, Any]]:
    """The leases of a lock record that have not expired, by part; for a sharded run's lock
    (given its `store` and `fleet`) the leases in its parts' journals under its token, and its
    own first lease as `(lock)` while no part holds one."""
    now = time.time() if now is None else now
    if not rec.get("sharded") or store is None:
        return _live(rec, now)
    run, token = str(rec.get("run_id", "")), str(rec.get("token", ""))
    out: dict[str, dict[str, Any]] = {}
    for part in sorted(_parts(store, rec)):
        got = store.get(journal_name(f"{run}.{part}"))
        lease = lease_of(got[0] if got else None, fleet, token, now)
        if lease is not None:
            out[part] = lease
    if not out and float(rec.get("expires", 0) or 0) > now:
        out["(lock)"] = {"expires": rec["expires"]}
    return out


def lock_status(store: S3Store, fleet: str) -> dict[str, Any] | None:
    got = store.get(_name(fleet))
    return got[0] if got else None


def break_lock(store: S3Store, fleet: str) -> dict[str, Any] | None:
    """Remove the fleet's lock whoever holds it; returns the record removed (None: it was free).
    The leases its parts hold name its token, which no lock has any more: they hold nothing."""
    got = store.get(_name(fleet))
    if got is None:
        return None
    store.delete(_name(fleet))
    return got[0]
