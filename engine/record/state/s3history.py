"""The run history and run journals in the shared state backend, readable from any machine.

    history/index.json              every run's record (what `playbook history` lists), changed
                                    only by compare-and-swap (If-Match on the version read)
    history/runs/<run id>.json      the run's journal: each (step, host) result as it finished

`S3History` has the methods of the SQLite `History` (engine/record/history.py), so the recorder,
`--resume`, the coordinator, rollback and `playbook history` use either. Results pass the same
secret scrubber before they are written. The journal is written by one background writer that
always sends everything recorded so far (group commit: at most one request in flight, none
while nothing changed), so a killed run loses at most the results of its last moment, which a
resume then redoes; `close()` writes the rest. A run costs: one index update at the start, one
at the end (two requests each) and one journal write per burst of results.
"""

from __future__ import annotations

import copy
import getpass
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from engine.record.history import RunRecord, result_row
from engine.record.state.s3store import Precondition, S3Store, StateError

__all__ = ["S3History"]

INDEX = "history/index.json"
_RETRIES = 30


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
        self._cond = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closing = False
        self._error: Exception | None = None
        # the index as this process last wrote it, with the ETag that write returned: the next
        # change tries its CAS on it without reading first (a 412 means someone wrote since)
        self._known: tuple[list[dict[str, Any]], str] | None = None

    # -- the index: compare-and-swap ---------------------------------------------------------

    def _index(self) -> tuple[list[dict[str, Any]], str | None]:
        got = self.store.get(INDEX)
        if got is None:
            return [], None
        doc, etag = got
        runs = doc.get("runs") if isinstance(doc, dict) else None
        if not isinstance(runs, list):
            raise StateError(f"{self.store.where(INDEX)}: not a playbook history index")
        return runs, etag

    def _change(self, run_id: str, change: Any) -> None:
        for _ in range(_RETRIES):
            known, self._known = self._known, None
            runs, etag = (copy.deepcopy(known[0]), known[1]) if known else self._index()
            by_id = {r.get("run_id"): i for i, r in enumerate(runs)}
            old = runs[by_id[run_id]] if run_id in by_id else None
            new = change(old)
            if run_id in by_id:
                runs[by_id[run_id]] = new
            else:
                runs.append(new)
            try:
                if etag is None:
                    written = self.store.put(INDEX, {"runs": runs}, if_absent=True)
                else:
                    written = self.store.put(INDEX, {"runs": runs}, if_match=etag)
                self._known = (copy.deepcopy(runs), written)
                return
            except Precondition:
                continue
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
        rec = {
            "run_id": run_id,
            "playbook": playbook,
            "name": name,
            "mode": mode,
            "user": _user(),
            "started": time.time(),
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
        self._change(run_id, lambda _old: rec)
        got = self.store.get(self._journal_name(run_id))  # a resumed part keeps what it recorded
        with self._cond:
            self._journals[run_id] = list(got[0]) if got and isinstance(got[0], list) else []
            self._written[run_id] = len(self._journals[run_id])

    def finish_run(self, run_id: str, exit_code: int, status: str) -> None:
        self._flush()

        def done(old: dict[str, Any] | None) -> dict[str, Any]:
            rec = dict(old or {"run_id": run_id})
            rec.update(finished=time.time(), exit_code=exit_code, status=status)
            return rec

        self._change(run_id, done)

    # -- the journal: one writer, group commit -----------------------------------------------

    @staticmethod
    def _journal_name(run_id: str) -> str:
        return f"history/runs/{run_id}.json"

    def add_result(self, run_id: str, result: Any, scrub: Any = None) -> None:
        row = result_row(result, scrub)
        row["finished"] = time.time()
        with self._cond:
            self._journals.setdefault(run_id, []).append(row)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="playbook-journal", daemon=True)
                self._writer.start()
            self._cond.notify_all()

    def _dirty(self) -> list[str]:
        return [r for r, rows in self._journals.items() if len(rows) > self._written.get(r, 0)]

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._dirty() and not self._closing:
                    self._cond.wait()
                if not self._dirty() and self._closing:
                    return
                batch = {r: list(self._journals[r]) for r in self._dirty()}
            for run_id, rows in batch.items():
                try:
                    self.store.put(self._journal_name(run_id), rows)
                except Exception as exc:  # reported by close(); the next burst tries again
                    self._error = exc
                    continue
                with self._cond:
                    self._written[run_id] = max(self._written.get(run_id, 0), len(rows))
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

    def runs(self, name: str | None = None, *, mode: str | None = "run", limit: int = 50) -> list[RunRecord]:
        runs = [self._record(r) for r in self._index()[0]]
        runs = [r for r in runs if (not name or name in (r.name, r.playbook)) and (not mode or r.mode == mode)]
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
                return self._record(r)
        for r in runs:
            if str(r.get("run_id", "")).startswith(run_id):
                return self._record(r)
        return None

    def details(self, run_id: str) -> list[dict[str, Any]]:
        got = self.store.get(self._journal_name(run_id))
        rows = got[0] if got and isinstance(got[0], list) else []
        return [dict(r) for r in rows if isinstance(r, dict)]

    def results(self, run_id: str) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in ("finished", "diffs")} for r in self.details(run_id)]

    def iter_results(self, name: str, step: str | None = None) -> Iterator[tuple[RunRecord, dict[str, Any]]]:
        for rec in self.runs(name, limit=1000):
            for res in self.results(rec.run_id):
                if step is None or res["step"] == step:
                    yield rec, res
