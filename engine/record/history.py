"""Run history in an embedded SQLite store (`<state dir>/history.sqlite`).

Every run records who ran what, where and with which result: per host and step status, the
release id, the outputs (artifact digests among them) and the plan hash. Records pass the
secret scrubber before they are written. `HistoryRecorder` is an event subscriber.
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from engine.model.events import Event, RunFinished, RunStarted, StepFinished
from engine.model.results import UnknownValue

__all__ = ["History", "HistoryRecorder", "RunRecord", "result_row"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    playbook TEXT NOT NULL,
    name TEXT NOT NULL,
    mode TEXT NOT NULL,
    user TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    release_id TEXT,
    exit_code INTEGER,
    status TEXT NOT NULL DEFAULT 'running',
    playbook_hash TEXT,
    inventory_hash TEXT,
    plan_hash TEXT,
    limit_pattern TEXT,
    extra TEXT
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    step TEXT NOT NULL,
    host TEXT,
    status TEXT NOT NULL,
    message TEXT,
    duration REAL,
    attempts INTEGER,
    outputs TEXT,
    fingerprint TEXT,
    finished REAL
);
CREATE INDEX IF NOT EXISTS results_run ON results(run_id);
CREATE INDEX IF NOT EXISTS runs_name ON runs(name, started);
"""
#: (name, declaration) of result columns added since; created on open where missing
_ADDED_RESULT_COLUMNS = (("diffs", "TEXT"),)


def _json_safe(value: Any) -> Any:
    if isinstance(value, UnknownValue):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def result_row(result: Any, scrub: Any = None) -> dict[str, Any]:
    """A step result as the history keeps it (JSON-safe, passed through `scrub`)."""
    outputs = _json_safe(dict(result.outputs))
    fingerprint = _json_safe(dict(result.plan.fingerprint)) if result.plan else {}
    diffs = [d.to_dict() for d in result.plan.diffs] if result.plan else []
    message = result.message
    if scrub is not None:
        outputs, fingerprint, message, diffs = scrub(outputs), scrub(fingerprint), scrub(message), scrub(diffs)
    return {
        "step": result.step,
        "host": result.host,
        "status": result.status.value,
        "message": message,
        "duration": result.duration,
        "attempts": result.attempts,
        "outputs": outputs,
        "fingerprint": fingerprint,
        "diffs": diffs,
    }


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    playbook: str
    name: str
    mode: str
    user: str
    started: float
    finished: float | None
    release_id: str | None
    exit_code: int | None
    status: str
    playbook_hash: str | None
    inventory_hash: str | None
    plan_hash: str | None
    limit_pattern: str | None
    extra: dict

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_RUN_FIELDS = tuple(f.name for f in fields(RunRecord))  # in the order of the `runs` table's columns


class History:
    """The store. Safe to share between threads (one connection, one lock)."""

    def __init__(self, state_dir: str) -> None:
        os.makedirs(state_dir, exist_ok=True)
        self.path = os.path.join(state_dir, "history.sqlite")
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Columns added after the first release, for stores written by an older playbook
        (their rows read back as NULL: an older run simply has no diffs recorded)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(results)")}
        for name, decl in _ADDED_RESULT_COLUMNS:
            if name not in have:
                try:
                    self._db.execute(f"ALTER TABLE results ADD COLUMN {name} {decl}")
                except sqlite3.OperationalError:  # another process added it first
                    pass

    def close(self) -> None:
        self._db.close()

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
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO runs (run_id, playbook, name, mode, user, started, release_id, status,"
                " playbook_hash, inventory_hash, plan_hash, limit_pattern, extra)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                (
                    run_id,
                    playbook,
                    name,
                    mode,
                    _user(),
                    time.time(),
                    release_id,
                    playbook_hash,
                    inventory_hash,
                    plan_hash,
                    limit,
                    json.dumps(extra or {}),
                ),
            )

    def add_result(self, run_id: str, result: Any, scrub: Any = None) -> None:
        row = result_row(result, scrub)
        outputs, fingerprint, message, diffs = row["outputs"], row["fingerprint"], row["message"], row["diffs"]
        with self._lock:
            self._db.execute(
                "INSERT INTO results (run_id, step, host, status, message, duration, attempts, outputs, fingerprint,"
                " finished, diffs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    result.step,
                    result.host,
                    result.status.value,
                    message,
                    result.duration,
                    result.attempts,
                    json.dumps(outputs),
                    json.dumps(fingerprint),
                    time.time(),
                    json.dumps(diffs),
                ),
            )

    def finish_run(self, run_id: str, exit_code: int, status: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE runs SET finished = ?, exit_code = ?, status = ? WHERE run_id = ?",
                (time.time(), exit_code, status, run_id),
            )

    def runs(self, name: str | None = None, *, mode: str | None = "run", limit: int = 50) -> list[RunRecord]:
        sql = "SELECT * FROM runs"
        where: list[str] = []
        params: list[str | int] = []
        if name:
            where.append("(name = ? OR playbook = ?)")
            params += [name, name]
        if mode:
            where.append("mode = ?")
            params.append(mode)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started DESC LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [self._record(r) for r in rows]

    def release_ids(self, base: str) -> set[str]:
        """The recorded release ids equal to `base` or of the form `base-N`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT release_id FROM runs WHERE release_id = ? OR release_id LIKE ?", (base, base + "-%")
            ).fetchall()
        return {r[0] for r in rows}

    def run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM runs WHERE run_id = ? OR run_id LIKE ?", (run_id, run_id + "%")
            ).fetchone()
        return self._record(row) if row else None

    def results(self, run_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT step, host, status, message, duration, attempts, outputs, fingerprint FROM results"
                " WHERE run_id = ? ORDER BY rowid",
                (run_id,),
            ).fetchall()
        return [
            {
                "step": r[0],
                "host": r[1],
                "status": r[2],
                "message": r[3],
                "duration": r[4],
                "attempts": r[5],
                "outputs": json.loads(r[6] or "{}"),
                "fingerprint": json.loads(r[7] or "{}"),
            }
            for r in rows
        ]

    def details(self, run_id: str) -> list[dict[str, Any]]:
        """`results` plus when each step finished (epoch seconds) and the diffs it showed (empty
        for runs recorded before diffs were kept): what the HTML report draws."""
        with self._lock:
            rows = self._db.execute(
                "SELECT step, host, status, message, duration, attempts, outputs, fingerprint, finished, diffs"
                " FROM results WHERE run_id = ? ORDER BY rowid",
                (run_id,),
            ).fetchall()
        return [
            {
                "step": r[0],
                "host": r[1],
                "status": r[2],
                "message": r[3],
                "duration": r[4],
                "attempts": r[5],
                "outputs": json.loads(r[6] or "{}"),
                "fingerprint": json.loads(r[7] or "{}"),
                "finished": r[8],
                "diffs": json.loads(r[9]) if r[9] else [],
            }
            for r in rows
        ]

    def iter_results(self, name: str, step: str | None = None) -> Iterator[tuple[RunRecord, dict[str, Any]]]:
        """Results of finished runs of a playbook, newest first (for "what is deployed where")."""
        for rec in self.runs(name, limit=1000):
            for res in self.results(rec.run_id):
                if step is None or res["step"] == step:
                    yield rec, res

    @staticmethod
    def _record(row: tuple) -> RunRecord:
        # by name: mypy cannot count the items of a slice, so `*row[:14]` could also fill `extra`
        return RunRecord(**dict(zip(_RUN_FIELDS[:14], row)), extra=json.loads(row[14] or "{}"))


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid())


class HistoryRecorder:
    """Event subscriber that writes a run into the history as it happens."""

    def __init__(
        self,
        history: History,
        *,
        name: str,
        release_id: str,
        playbook_hash: str = "",
        inventory_hash: str = "",
        plan_hash: str = "",
        limit: str | None = None,
        scrub: Any = None,
    ) -> None:
        self.history = history
        self.name = name
        self.release_id = release_id
        self.hashes = (playbook_hash, inventory_hash, plan_hash)
        self.limit = limit
        self.scrub = scrub
        self.run_id = ""

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.run_id = event.run_id
            self.history.start_run(
                run_id=event.run_id,
                playbook=event.playbook,
                name=self.name,
                mode=event.mode,
                release_id=self.release_id,
                playbook_hash=self.hashes[0],
                inventory_hash=self.hashes[1],
                plan_hash=self.hashes[2],
                limit=self.limit,
            )
        elif isinstance(event, StepFinished):
            self.history.add_result(self.run_id, event.result, self.scrub)
        elif isinstance(event, RunFinished):
            s = event.summary
            status = "interrupted" if s.interrupted else ("failed" if s.exit_code() == 1 else "ok")
            self.history.finish_run(self.run_id, s.exit_code(), status)
