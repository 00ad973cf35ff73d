"""The lease of one part of a sharded run, kept in that part's own journal object.

The parts of a sharded run (its shards and its coordinator) share their fleets' deploy locks
(engine/record/state/s3lock.py). The lock object names the run; each part's lease lives in the
object that part writes anyway, its journal `history/runs/<run id>.<part>.json`:

    {"results": [...], "end": {...}, "lease": {"expires", "pid", "host", "runner",
     "tokens": {fleet: lock token}}, "fenced": [lock token, ...]}

so parts joining the lock only read it, and never contend with each other for one object.

* `claim()` writes the journal with `If-None-Match: *` (a new part) or `If-Match` on the version
  it read (a resume). Two copies of one part race on that write: the loser reads a live lease
  under the same lock and is refused. It replaces the journal read a part makes at its start.
* Every journal write of the part carries the lease, renewed (`expires` pushed `ttl` ahead)
  and conditional on the version the part wrote last; when no result is written for `ttl / 3`
  seconds the part rewrites its journal to renew it.
* A part that ends ok keeps its last lease (no longer renewed): the run goes on with its
  coordinator, and a copy of the part started within a TTL is refused. One that fails or is
  interrupted writes its journal without the lease (its resume can start at once).
* Another run takes a lapsed lock over only after *fencing* each part of the lock's run: a
  conditional write of the lock's token into `fenced` of that part's journal, which it makes
  only while that part holds no live lease under that token. A part whose claim finds its
  lock's token fenced lost the lock and is refused; a fence that finds a live lease means the
  run is alive and the other run is refused. So a part that joined a lock just before it was
  taken over cannot deploy beside the run that took it: the journal write decides.
"""

from __future__ import annotations

import copy
import os
import socket
import threading
import time
from typing import Any

from engine.errors import LockHeld
from engine.record.state.s3store import Precondition, S3Store, StateError, backoff

__all__ = ["PartLease", "journal_name", "claimed", "lease_of", "fence", "unfence", "runner_name", "lease_record"]

_RETRIES = 20
# the parts this process claimed, by (store, part run id): their journal writes go through them
_CLAIMED: dict[tuple[Any, ...], PartLease] = {}
_MUTEX = threading.Lock()


def journal_name(run_id: str) -> str:
    """The journal object of a run or part: `history/runs/<run id>.json`."""
    return f"history/runs/{run_id}.json"


def _where(store: S3Store) -> tuple[Any, ...]:
    return (store.url.endpoint_url, store.url.bucket, store.url.prefix)


def claimed(store: S3Store, run_id: str) -> PartLease | None:
    """The lease this process claimed for part `run_id` in `store`, if any."""
    with _MUTEX:
        return _CLAIMED.get((_where(store), run_id))


def lease_of(doc: Any, fleet: str, token: str, now: float) -> dict[str, Any] | None:
    """The live lease in journal `doc` under lock `token` of `fleet` (None: none, expired, fenced)."""
    if not isinstance(doc, dict) or token in (doc.get("fenced") or []):
        return None
    lease = doc.get("lease")
    if not isinstance(lease, dict) or float(lease.get("expires", 0) or 0) <= now:
        return None
    tokens = lease.get("tokens")
    return dict(lease) if isinstance(tokens, dict) and tokens.get(fleet) == token else None


def fence(store: S3Store, run_id: str, part: str, fleet: str, token: str, *, held: Any) -> None:
    """Fence part `part` of run `run_id` out of lock `token` of `fleet`: write the token into its
    journal's `fenced`, on the version read, only while it holds no live lease under it. A live
    lease raises `held(lease)` (the run is alive)."""
    name = journal_name(f"{run_id}.{part}")
    for attempt in range(_RETRIES):
        got = store.get(name)
        doc, etag = got if got is not None else ({"results": []}, None)
        if not isinstance(doc, dict):
            doc = {"results": doc if isinstance(doc, list) else []}
        lease = lease_of(doc, fleet, token, time.time())
        if lease is not None:
            raise held(lease)
        if token in (doc.get("fenced") or []):
            return
        doc["fenced"] = sorted({*(doc.get("fenced") or []), token})
        try:
            if etag is None:
                store.put(name, doc, if_absent=True)
            else:
                store.put(name, doc, if_match=etag)
            return
        except Precondition:
            backoff(attempt)
    raise StateError(f"{store.where(name)}: too much contention (gave up after {_RETRIES} tries)")


def unfence(store: S3Store, run_id: str, part: str, token: str) -> None:
    """Withdraw a fence `fence` wrote (a take-over that found the run alive after all)."""
    name = journal_name(f"{run_id}.{part}")
    for attempt in range(_RETRIES):
        got = store.get(name)
        if got is None or not isinstance(got[0], dict) or token not in (got[0].get("fenced") or []):
            return
        doc, etag = got
        doc["fenced"] = [t for t in doc["fenced"] if t != token]
        try:
            store.put(name, doc, if_match=etag)
            return
        except Precondition:
            backoff(attempt)


class PartLease:
    """The lease of part `run_id` (`<run id>.<part>`) under the locks `tokens` (`{fleet:
    token}`), in its journal. `claim()`, then `release()`; in between the journal writer calls
    `write()`, and a daemon thread renews the lease when nothing was written for `ttl / 3`."""

    def __init__(self, store: S3Store, run_id: str, tokens: dict[str, str], *, ttl: float) -> None:
        self.store = store
        self.run_id = run_id
        self.name = journal_name(run_id)
        self.tokens = dict(tokens)
        self.ttl = ttl
        self.doc: dict[str, Any] = {"results": []}  # what the journal held when claimed, then what we wrote
        self._fenced: list[str] = []
        self._etag: str | None = None
        self._lease: dict[str, Any] | None = None  # the lease our last write carried
        self._state = "new"  # new, live, kept (ended ok), dropped, lost (someone else wrote the journal)
        self._written_at = 0.0
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _fresh(self) -> dict[str, Any]:
        return {**lease_record(self.ttl), "tokens": dict(self.tokens)}

    def _check(self, doc: dict[str, Any]) -> None:
        fenced = set(doc.get("fenced") or [])
        now = time.time()
        for fleet, token in sorted(self.tokens.items()):
            if token in fenced:
                raise LockHeld(
                    f"deploy lock of fleet '{fleet}' ({self.store.where('locks/')}): run {self.run_id.rpartition('.')[0]} "
                    f"lost it: its leases lapsed and another run took it over; start a new run (or "
                    f"--resume it once the other run ended)",
                    path=fleet,
                )
            lease = lease_of(doc, fleet, token, now)
            if lease is not None:
                left = float(lease.get("expires", now)) - now
                raise LockHeld(
                    f"deploy lock of fleet '{fleet}': part {self.run_id.rpartition('.')[2]} of run "
                    f"{self.run_id.rpartition('.')[0]} is already running (pid {lease.get('pid')} on "
                    f"{lease.get('host')}, runner {lease.get('runner')}, lease in {self.store.where(self.name)} for "
                    f"{int(left)}s more; a part that ended ok keeps its lease until the coordinator ends the "
                    f"run); if it died, break the lock with 'playbook lock break' or wait for the lease to end",
                    path=fleet,
                )

    def _body(self, doc: dict[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in doc.items() if k not in ("lease", "fenced")}
        if self._fenced:
            body["fenced"] = list(self._fenced)
        if self._state == "live":
            self._lease = self._fresh()
        if self._state in ("live", "kept") and self._lease is not None:
            body["lease"] = self._lease
        return body

    def claim(self) -> None:
        """Take the lease (one conditional write), or raise `LockHeld`: the part runs elsewhere,
        or its lock was taken over."""
        got: tuple[Any, str] | None = None
        with self._mutex:
            for attempt in range(_RETRIES):
                if got is not None:
                    doc = (
                        got[0] if isinstance(got[0], dict) else {"results": got[0] if isinstance(got[0], list) else []}
                    )
                    self._check(doc)
                else:
                    doc = {"results": []}
                self._fenced = [str(t) for t in doc.get("fenced") or []]
                self._state = "live"
                try:
                    body = self._body(doc)
                    if got is None:
                        self._etag = self.store.put(self.name, body, if_absent=True)
                    else:
                        self._etag = self.store.put(self.name, body, if_match=got[1])
                except Precondition:
                    self._state = "new"
                    if got is not None:
                        backoff(attempt)
                    got = self.store.get(self.name)
                    continue
                self.doc = {k: copy.deepcopy(v) for k, v in doc.items() if k not in ("lease", "fenced")}
                self._written_at = time.monotonic()
                break
            else:
                raise StateError(f"{self.store.where(self.name)}: too much contention (gave up after {_RETRIES} tries)")
        with _MUTEX:
            _CLAIMED[(_where(self.store), self.run_id)] = self
        self._thread = threading.Thread(target=self._renew_loop, name=f"playbook-lease-{self.run_id}", daemon=True)
        self._thread.start()

    def write(self, doc: dict[str, Any]) -> None:
        """Write the journal `doc` with the lease, on the version written last."""
        with self._mutex:
            self._write(doc)

    def _write(self, doc: dict[str, Any]) -> None:
        if self._state == "lost":
            raise StateError(f"{self.store.where(self.name)}: written by another process; this part lost its lease")
        try:
            self._etag = self.store.put(self.name, self._body(doc), if_match=self._etag)
        except Precondition:
            self._state = "lost"
            self._stop.set()
            raise StateError(
                f"{self.store.where(self.name)}: written by another process (its lock was broken or taken "
                f"over); this part lost its lease"
            ) from None
        self.doc = doc
        self._written_at = time.monotonic()

    def _renew_loop(self) -> None:
        while True:
            with self._mutex:
                due = self._written_at + self.ttl / 3 - time.monotonic()
            if self._stop.wait(max(0.05, due)):
                return
            try:
                self.renew()
            except Exception:  # retried next period; the lease outlives one miss
                pass

    def renew(self, *, force: bool = False) -> None:
        """Rewrite the journal when `ttl / 3` passed since the last write (or `force`)."""
        with self._mutex:
            if self._state == "live" and (force or time.monotonic() - self._written_at >= self.ttl / 3):
                self._write(self.doc)

    def release(self, *, ended_ok: bool = False) -> None:
        """Stop renewing. `ended_ok`: keep the last lease (no request); else write the journal
        without it, so the part's resume can start at once."""
        self._stop.set()
        with self._mutex:
            if self._state != "live":
                return
            self._state = "kept" if ended_ok else "dropped"
            if not ended_ok:
                try:
                    self._write(self.doc)
                except StateError:
                    pass


def lease_record(ttl: float) -> dict[str, Any]:
    """A lease for `ttl` seconds from now, naming this process, its machine and its CI runner."""
    return {"expires": time.time() + ttl, "pid": os.getpid(), "host": socket.gethostname(), "runner": runner_name()}


def runner_name() -> str:
    """Which CI runner or job this is: GitLab's job URL or runner, a Kubernetes pod, or the host."""
    env = os.environ
    for key in ("CI_JOB_URL", "CI_RUNNER_DESCRIPTION", "HOSTNAME"):
        if env.get(key):
            return env[key]
    return socket.gethostname()
