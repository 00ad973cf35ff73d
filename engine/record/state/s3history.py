"""The run history and run journals in the shared state backend, readable from any machine.

    history/index.json              every run's record (what `playbook history` lists), changed
                                    only by compare-and-swap (If-Match on the version read)
    history/runs/<run id>.json      the run's journal: each (step, host) result as it finished,
                                    `{"results": [...], "end": {...}}`; a part of a sharded
                                    run keeps its deploy-lock lease there too (s3lease.py)

`S3History` has the methods of the SQLite `History` (engine/record/history.py), so the recorder,
`--resume`, the coordinator, rollback and `playbook history` use either. Results pass the same
secret scrubber before they are written. The journal is written by one background writer that
always sends everything recorded so far (group commit: at most one request in flight, none
while nothing changed), so a killed run loses at most the results of its last moment, which a
resume then redoes; `close()` writes the rest.

A part of a sharded run that holds a lease (`s3lease.PartLease`) writes its journal through
it: the lease rides on each write, and the claim at its start read or created the journal.

A run costs one index update at the start (read + CAS write) and one at the end (a CAS write on
the version its start wrote). The shards of a sharded run all end at about the same time, and
each CAS they lose costs a read and a write again; so a shard that ends ok writes its end into
its own journal instead (`end`, with the start time it belongs to: a resumed part's old end does
not count), and readers take a running shard's end from there. The coordinator has just read
those journals (it checks that every shard finished): its own index writes fold the shards' ends
into the index. A shard that fails, or is interrupted, writes its end into the index as any run.
Shards also start together: every journal write of a shard carries its start record, and a shard
that loses its start's CAS and then reads an index holding a sibling (a shard of its run) gives
up there: readers that see the sibling find it in its journal (`<run>.s2of4` names its
siblings), and the coordinator folds it into the index with the ends. A start lost to a sibling
costs 3 index requests (read, write, read), not another read and write per sibling.
What this process last read or wrote of an index, with its ETag, is remembered per store, so the
next CAS write is tried on it without reading first (a 412 means someone wrote since).
"""

from __future__ import annotations

import copy
import getpass
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from engine.record.history import RunRecord, result_row
from engine.record.state.s3lease import claimed, journal_name
from engine.record.state.s3store import Precondition, S3Store, StateError, backoff

__all__ = ["S3History"]

INDEX = "history/index.json"
_RETRIES = 30
_SHARD_PART = re.compile(r"\.s\d+of\d+$")  # `<run id>.s2of4` (engine/execute/shard.py)
_SHARD_OF = re.compile(r"^(.+)\.s\d+of(\d+)$")

# per store (endpoint, bucket, prefix), in this process: the index last read or written with its
# ETag, and the ends of shards seen in their journals (by run id), folded in at the next write
_KNOWN: dict[tuple[Any, ...], tuple[list[dict[str, Any]], str]] = {}
_ENDS: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
_STARTS: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}  # shards' starts only their journals hold
_SHARED = threading.Lock()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid())


class S3History:
    """The history in `store`; the same interface as `History`."""

    def __init__(self, store: S3Store) -> None:
        self.store = store
        self.path = store.where("history/")
        self._journals: dict[str, list[dict[str, Any]]] = {}
        self._written: dict[str, int] = {}
        self._started: dict[str, float] = {}  # the start time of each run this process started
        self._end: dict[str, dict[str, Any]] = {}  # a shard's end, to go into its journal
        self._end_written: set[str] = set()
        self._starts: dict[str, dict[str, Any]] = {}  # a shard's start record, in each journal write
        self._start_unwritten: set[str] = set()  # shards whose start is in neither index nor journal yet
        self._cond = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closing = False
        self._error: Exception | None = None

    @property
    def _ident(self) -> tuple[Any, ...]:
        return (self.store.url.endpoint_url, self.store.url.bucket, self.store.url.prefix)

    # -- the index: compare-and-swap ---------------------------------------------------------

    def _index(self) -> tuple[list[dict[str, Any]], str | None]:
        got = self.store.get(INDEX)
        if got is None:
            return [], None
        doc, etag = got
        runs = doc.get("runs") if isinstance(doc, dict) else None
        if not isinstance(runs, list):
            raise StateError(f"{self.store.where(INDEX)}: not a playbook history index")
        with _SHARED:
            _KNOWN[self._ident] = (copy.deepcopy(runs), etag)
        return runs, etag

    def _change(self, run_id: str, change: Any, *, siblings: str = "") -> bool:
        """Change `run_id`'s record in the index by compare-and-swap, folding in the shards'
        ends and the starts only their journals hold. `siblings` (a shard's start: its run's
        shards' prefix): after a lost write, give up (False) when the index now holds a sibling
        and not this part; the part's start is then in its journal, where readers find it."""
        lost = False
        for attempt in range(_RETRIES):
            with _SHARED:
                known = _KNOWN.pop(self._ident, None)
                ends = dict(_ENDS.get(self._ident, {}))
                starts = dict(_STARTS.get(self._ident, {}))
            runs, etag = (copy.deepcopy(known[0]), known[1]) if known else self._index()
            by_id = {r.get("run_id"): i for i, r in enumerate(runs)}
            if lost and siblings and run_id not in by_id and any(str(r).startswith(siblings) for r in by_id):
                return False
            old = runs[by_id[run_id]] if run_id in by_id else None
            new = change(old)
            if run_id in by_id:
                runs[by_id[run_id]] = new
            else:
                runs.append(new)
            runs += [dict(rec) for part, rec in sorted(starts.items()) if part not in by_id and part != run_id]
            runs = [_ended(r, ends.get(str(r.get("run_id")))) for r in runs]  # fold the shards' ends in
            try:
                if etag is None:
                    written = self.store.put(INDEX, {"runs": runs}, if_absent=True)
                else:
                    written = self.store.put(INDEX, {"runs": runs}, if_match=etag)
                with _SHARED:
                    _KNOWN[self._ident] = (copy.deepcopy(runs), written)
                return True
            except Precondition:
                if known is None:  # lost to another writer (not only our memory being stale)
                    lost = True
                    backoff(attempt)
        raise StateError(f"{self.store.where(INDEX)}: too much contention (gave up after {_RETRIES} tries)")

    def start_run(
        self,
        *,
        run_id: str,
        playbook: str,
        name: str,
        mode: str,
        release_id: str,
        playbook_hash: str = "",
        inventory_hash: str = "",
        plan_hash: str = "",
        limit: str | None = None,
        extra: dict | None = None,
    ) -> None:
        self.store.self_test()
        started = time.time()
        rec = {
            "run_id": run_id,
            "playbook": playbook,
            "name": name,
            "mode": mode,
            "user": _user(),
            "started": started,
            "finished": None,
            "release_id": release_id,
            "exit_code": None,
            "status": "running",
            "playbook_hash": playbook_hash,
            "inventory_hash": inventory_hash,
            "plan_hash": plan_hash,
            "limit_pattern": limit,
            "extra": extra or {},
        }
        # a resumed part keeps what it recorded; an end it recorded before belongs to its
        # earlier start (`started` differs) and no longer counts. A part that claimed its lease
        # read or created its journal doing so
        lease = claimed(self.store, run_id)
        rows = [dict(r) for r in lease.doc.get("results") or [] if isinstance(r, dict)] if lease else None
        if rows is None:
            rows, _old_end = self._journal(run_id)
        shard = _SHARD_PART.search(run_id)
        with self._cond:
            self._started[run_id] = started
            self._journals[run_id] = rows
            self._written[run_id] = len(rows)
            self._end.pop(run_id, None)
            self._end_written.discard(run_id)
            if shard:  # every journal write of a shard carries its start
                self._starts[run_id] = rec
        if self._change(run_id, lambda _old: rec, siblings=run_id[: shard.start()] + ".s" if shard else ""):
            return
        # shards starting together: a sibling's start is in the index, this one goes into its journal
        with self._cond:
            self._start_unwritten.add(run_id)
            self._ensure_writer()
            self._cond.notify_all()
        self._flush()
        if run_id in self._start_unwritten:  # the journal write failed: into the index after all
            self._change(run_id, lambda _old: rec)

    def finish_run(self, run_id: str, exit_code: int, status: str) -> None:
        end = {"finished": time.time(), "exit_code": exit_code, "status": status}
        if status == "ok" and _SHARD_PART.search(run_id) and run_id in self._started:
            with self._cond:
                self._end[run_id] = {**end, "started": self._started[run_id]}
                self._ensure_writer()
                self._cond.notify_all()
            self._flush()
            if run_id in self._end_written:
                return  # else (the journal write failed): into the index, as any run
        self._flush()

        def done(old: dict[str, Any] | None) -> dict[str, Any]:
            rec = dict(old or self._starts.get(run_id) or {"run_id": run_id})
            rec.update(end)
            return rec

        self._change(run_id, done)

    # -- the journal: one writer, group commit -----------------------------------------------

    @staticmethod
    def _journal_name(run_id: str) -> str:
        return journal_name(run_id)

    def add_result(self, run_id: str, result: Any, scrub: Any = None) -> None:
        row = result_row(result, scrub)
        row["finished"] = time.time()
        with self._cond:
            self._journals.setdefault(run_id, []).append(row)
            self._ensure_writer()
            self._cond.notify_all()

    def _ensure_writer(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="playbook-journal", daemon=True)
            self._writer.start()

    def _dirty(self) -> list[str]:
        rows = [r for r, got in self._journals.items() if len(got) > self._written.get(r, 0)]
        rows += [r for r in self._end if r not in self._end_written and r not in rows]
        return rows + [r for r in self._start_unwritten if r not in rows]

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._dirty() and not self._closing:
                    self._cond.wait()
                if not self._dirty() and self._closing:
                    return
                batch = {
                    r: (list(self._journals.get(r, [])), self._end.get(r), self._starts.get(r)) for r in self._dirty()
                }
            for run_id, (rows, end, start) in batch.items():
                doc: dict[str, Any] = {
                    "results": rows,
                    **({"end": end} if end else {}),
                    **({"start": start} if start else {}),
                }
                try:
                    lease = claimed(self.store, run_id)  # a part's lease rides on its journal writes
                    if lease is not None:
                        lease.write(doc)
                    else:
                        self.store.put(self._journal_name(run_id), doc)
                except Exception as exc:  # reported by close(); the next burst tries again
                    self._error = exc
                    if end:  # finish_run waits for this: it goes into the index instead
                        with self._cond:
                            self._end.pop(run_id, None)
                            self._cond.notify_all()
                    continue
                with self._cond:
                    self._written[run_id] = max(self._written.get(run_id, 0), len(rows))
                    self._start_unwritten.discard(run_id)
                    if end:
                        self._end_written.add(run_id)
                        with _SHARED:
                            _ENDS.setdefault(self._ident, {})[run_id] = end
                    self._cond.notify_all()

    def _flush(self) -> None:
        with self._cond:
            if self._writer is None:
                return
            self._cond.notify_all()
            deadline = time.monotonic() + 120
            while self._dirty() and time.monotonic() < deadline:
                self._cond.wait(1.0)

    def close(self) -> None:
        self._flush()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join(timeout=30)

    # -- reading -----------------------------------------------------------------------------

    @staticmethod
    def _record(raw: dict[str, Any]) -> RunRecord:
        fields = dict(raw)
        return RunRecord(
            run_id=str(fields.get("run_id", "")),
            playbook=str(fields.get("playbook", "")),
            name=str(fields.get("name", "")),
            mode=str(fields.get("mode", "run")),
            user=str(fields.get("user", "")),
            started=float(fields.get("started") or 0.0),
            finished=fields.get("finished"),
            release_id=fields.get("release_id"),
            exit_code=fields.get("exit_code"),
            status=str(fields.get("status", "running")),
            playbook_hash=fields.get("playbook_hash"),
            inventory_hash=fields.get("inventory_hash"),
            plan_hash=fields.get("plan_hash"),
            limit_pattern=fields.get("limit_pattern"),
            extra=dict(fields.get("extra") or {}),
        )

    def _journal(self, run_id: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """The journal's rows and the end it records (None: none, or not a dict)."""
        rows, end, _start = self._journal_doc(run_id)
        return rows, end

    def _journal_doc(self, run_id: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any] | None]:
        """The journal's rows, and the end and the start record it holds."""
        got = self.store.get(self._journal_name(run_id))
        doc = got[0] if got else None
        if isinstance(doc, list):  # written before journals had an end
            doc = {"results": doc}
        if not isinstance(doc, dict):
            return [], None, None
        rows = [dict(r) for r in doc.get("results") or [] if isinstance(r, dict)]
        end = doc.get("end") if isinstance(doc.get("end"), dict) else None
        if end is not None:
            with _SHARED:
                _ENDS.setdefault(self._ident, {})[run_id] = end
        return rows, end, doc.get("start") if isinstance(doc.get("start"), dict) else None

    def _unindexed(self, part: str) -> dict[str, Any] | None:
        """The record of shard `part` from its journal, for a shard whose start is not in the
        index (it lost its start's write to a sibling); remembered, to be folded into the index
        by this process's next write (the coordinator's)."""
        _rows, end, start = self._journal_doc(part)
        if start is None or start.get("run_id") != part:
            return None
        with _SHARED:
            _STARTS.setdefault(self._ident, {})[part] = dict(start)
        return _ended(dict(start), end)

    def _with_unindexed(self, raws: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`raws`, and the shards of the sharded runs in it that only their journals record."""
        have = {str(r.get("run_id", "")) for r in raws}
        out = list(raws)
        for run, total in sorted({(m.group(1), int(m.group(2))) for m in map(_SHARD_OF.match, have) if m}):
            for i in range(1, total + 1):
                part = f"{run}.s{i}of{total}"
                if part not in have and (rec := self._unindexed(part)) is not None:
                    out.append(rec)
        return out

    def _resolved(self, raw: dict[str, Any]) -> dict[str, Any]:
        """`raw`, with its end from its journal when it is a shard the index shows running."""
        run_id = str(raw.get("run_id", ""))
        if raw.get("status") != "running" or not _SHARD_PART.search(run_id):
            return raw
        return _ended(raw, self._journal(run_id)[1])

    def runs(self, name: str | None = None, *, mode: str | None = "run", limit: int = 50) -> list[RunRecord]:
        raws = [
            r for r in self._with_unindexed(self._index()[0]) if not name or name in (r.get("name"), r.get("playbook"))
        ]
        runs = [self._record(self._resolved(r)) for r in raws if not mode or r.get("mode", "run") == mode]
        return sorted(runs, key=lambda r: r.started, reverse=True)[:limit]

    def release_ids(self, base: str) -> set[str]:
        return {
            str(r["release_id"])
            for r in self._index()[0]
            if r.get("release_id") and (r["release_id"] == base or str(r["release_id"]).startswith(base + "-"))
        }

    def run(self, run_id: str) -> RunRecord | None:
        runs = self._index()[0]
        for r in runs:
            if r.get("run_id") == run_id:
                return self._record(self._resolved(r))
        if _SHARD_PART.search(run_id) and (found := self._unindexed(run_id)) is not None:
            return self._record(found)
        for r in runs:
            if str(r.get("run_id", "")).startswith(run_id):
                return self._record(self._resolved(r))
        return None

    def details(self, run_id: str) -> list[dict[str, Any]]:
        return self._journal(run_id)[0]

    def results(self, run_id: str) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in ("finished", "diffs")} for r in self.details(run_id)]

    def iter_results(self, name: str, step: str | None = None) -> Iterator[tuple[RunRecord, dict[str, Any]]]:
        for rec in self.runs(name, limit=1000):
            for res in self.results(rec.run_id):
                if step is None or res["step"] == step:
                    yield rec, res


def _ended(raw: dict[str, Any], end: dict[str, Any] | None) -> dict[str, Any]:
    """A running record with `end` applied when `end` belongs to this start of it."""
    if end is None or raw.get("status") != "running" or end.get("started") != raw.get("started"):
        return raw
    return {**raw, **{k: end[k] for k in ("finished", "exit_code", "status") if k in end}}
