"""Machine-readable reports: one JSON document per run, or one JSON line per event.

The run document (`summary_to_dict`, written by `JsonReporter`), format_version 1::

    {
      "format_version": 1,
      "run_id": "20240501-1203-ab12",
      "playbook": "playbooks/deploy-widgets.yml",
      "mode": "plan" | "run",
      "started": "2024-05-01T12:03:00.123456+00:00" | null,   # UTC, ISO 8601
      "finished": "…" | null,
      "duration": 12.345 | null,                              # seconds
      "exit_code": 0 | 1 | 2 | 130,                           # what the CLI exits with
      "aborted": "failure budget exceeded …" | null,
      "interrupted": false,
      "changes": 3,                       # results that changed / will or may change
      "failed_hosts": ["web03"],          # "controller" for controller steps
      "steps": ["sources.widgets", "sync", …],
      "hosts": {"web01": {"ok": 2, "changed": 1, "failed": 0, "skipped": 0,
                          "unreachable": 0, "unknown": 0}, …, "controller": {…}},
      "results": [
        {"step": "sync", "host": "web01" | null,   # null: ran on the controller
         "status": "ok" | "changed" | "failed" | "skipped" | "unreachable" | "unknown",
         "message": "…", "duration": 1.234, "attempts": 1,
         "plan": {"change": "will_change" | "no_change" | "unknown", "reason": "…",
                  "diffs": [Diff.to_dict(), …], "fingerprint": {…}} | null,
         "outputs": {…}},                  # JSON-safe: unknown-until-applied values are null
        …],
      "messages": [{"level": "warning" | "error", "text": "…", "host": …, "step": …}],
      "extra": {…}                         # RunFinished.extra, e.g. the saved plan path
    }

`results` are in a stable order, whatever order the steps finished in: controller results
first, then each host in the run's host order; within each, steps in playbook order (see
`ordered_results`). Everything is scrubbed of registered secrets. New keys may be added within
a format version; none is removed or changes meaning.

A command that stops before a run (the playbook does not load, a lock is held) prints, in
`--format json`, the error document `{"format_version": 1, "exit_code": 1, "errors": [{"message":
"…", "kind": "LoadError", "file": "deploy.yml", "line": 4, "col": 7}, …]}` (`error_document`), and
in `--format jsonl` the line `{"event": "error", "errors": […], "time": …}`.

The JSON Schemas of both formats are schemas/run.schema.json and schemas/events.schema.json
(engine/report/output_schema.py).

The event stream (`JsonLinesReporter`) writes one object per line, each with `"event"` and
`"time"` (epoch seconds): run_started, step_started, step_finished (the result's keys, flat),
host_finished, message, budget_exceeded (`fleet`, `failed`, `hosts`, `max_fail_percentage`),
progress (`host`, `step`, `what`, `done` and `total` bytes, `rate` in bytes/s, `eta` in seconds,
`at`: seconds since the run started on the monotonic clock that spaces them; at most one a second
per host, during transfers and downloads), and run_finished (`"summary"`:
the document above).
"""

from __future__ import annotations

import datetime as _dt
import json
import threading
import time
from collections.abc import Mapping
from typing import IO, Any

from engine.model.events import (
    BudgetExceeded,
    Event,
    HostFinished,
    Message,
    Progress,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
)
from engine.model.jsonable import json_safe
from engine.model.results import Plan, RunSummary, StepResult
from engine.secrets import SCRUBBER, Scrubber

__all__ = [
    "FORMAT_VERSION",
    "result_to_dict",
    "plan_to_dict",
    "summary_to_dict",
    "ordered_results",
    "event_to_dict",
    "error_document",
    "error_event",
    "JsonReporter",
    "JsonLinesReporter",
]

FORMAT_VERSION = 1
_NO_SCRUB = Scrubber()  # for inner documents that the caller scrubs as a whole


def _iso(ts: float) -> str | None:
    if not ts:
        return None
    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).isoformat()


def plan_to_dict(plan: Plan | None) -> dict[str, Any] | None:
    """The public part of a plan (`data` is private to the module and left out)."""
    if plan is None:
        return None
    return {
        "change": plan.change.value,
        "reason": plan.reason,
        "diffs": [d.to_dict() for d in plan.diffs],
        "fingerprint": json_safe(plan.fingerprint),
    }


def result_to_dict(result: StepResult, scrubber: Scrubber = SCRUBBER) -> dict[str, Any]:
    """One step result as a scrubbed, JSON-safe dict (see the module docstring)."""
    return scrubber.scrub_obj(_result_dict(result))


def _result_dict(result: StepResult) -> dict[str, Any]:
    doc = {
        "step": result.step,
        "host": result.host,
        "status": result.status.value,
        "message": result.message,
        "duration": round(result.duration, 3),
        "attempts": result.attempts,
        "plan": plan_to_dict(result.plan),
        "outputs": json_safe(result.outputs),
    }
    return json_safe(doc)


def summary_to_dict(
    summary: RunSummary,
    *,
    scrubber: Scrubber = SCRUBBER,
    messages: list[Message] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run document described in the module docstring, scrubbed and JSON-safe."""
    duration = summary.finished - summary.started if summary.started and summary.finished else None
    doc = {
        "format_version": FORMAT_VERSION,
        "run_id": summary.run_id,
        "playbook": summary.playbook,
        "mode": summary.mode,
        "started": _iso(summary.started),
        "finished": _iso(summary.finished),
        "duration": None if duration is None else round(duration, 3),
        "exit_code": summary.exit_code(),
        "aborted": summary.aborted,
        "interrupted": summary.interrupted,
        "changes": summary.changes,
        "failed_hosts": summary.failed_hosts,
        "steps": list(summary.steps),
        "hosts": summary.by_host(),
        "results": [_result_dict(r) for r in ordered_results(summary)],
        "messages": [_message_dict(m) for m in messages or ()],
        "extra": json_safe(dict(extra or {})),
    }
    return scrubber.scrub_obj(json_safe(doc))


def ordered_results(summary: RunSummary) -> list[StepResult]:
    """The results in a stable order: controller first, then hosts in the run's host order; within
    each, steps in playbook order (a step run more than once keeps its runs' order)."""
    hosts = {h: i for i, h in enumerate(summary.hosts)}
    steps = {s: i for i, s in enumerate(summary.steps)}

    def key(item: tuple[int, StepResult]) -> tuple[int, int, int]:
        n, r = item
        where = -1 if r.host is None else hosts.get(r.host, len(hosts))
        return (where, steps.get(r.step, len(steps)), n)

    return [r for _, r in sorted(enumerate(summary.results), key=key)]


def _error_dicts(exc: BaseException) -> list[dict[str, Any]]:
    from engine.errors import PlaybookError, ValidationErrors

    errors = exc.errors if isinstance(exc, ValidationErrors) else [exc]
    out = []
    for e in errors:
        doc: dict[str, Any] = {"message": getattr(e, "message", str(e)), "kind": type(e).__name__}
        loc = getattr(e, "location", None) if isinstance(e, PlaybookError) else None
        if loc is not None:
            doc.update(file=loc.file, line=loc.line, col=loc.col)
        if isinstance(e, PlaybookError) and e.path:
            doc["subject"] = e.path
        out.append(doc)
    return out


def error_document(exc: BaseException, scrubber: Scrubber = SCRUBBER) -> dict[str, Any]:
    """What `--format json` prints when a command stops before a run (see the module docstring)."""
    return scrubber.scrub_obj({"format_version": FORMAT_VERSION, "exit_code": 1, "errors": _error_dicts(exc)})


def error_event(exc: BaseException, scrubber: Scrubber = SCRUBBER) -> dict[str, Any]:
    """The `--format jsonl` line for the same."""
    return scrubber.scrub_obj({"event": "error", "errors": _error_dicts(exc), "time": round(time.time(), 3)})


def _message_dict(m: Message) -> dict[str, Any]:
    return {"level": m.level, "text": m.text, "host": m.host, "step": m.step}


def event_to_dict(event: Event, scrubber: Scrubber = SCRUBBER) -> dict[str, Any]:
    """One event as a flat JSON-safe dict with an `"event"` name (see the module docstring)."""
    doc: dict[str, Any]
    if isinstance(event, RunStarted):
        doc = {
            "event": "run_started",
            "run_id": event.run_id,
            "playbook": event.playbook,
            "mode": event.mode,
            "hosts": list(event.hosts),
            "steps": list(event.steps),
        }
    elif isinstance(event, StepStarted):
        doc = {"event": "step_started", "step": event.step, "host": event.host}
    elif isinstance(event, StepFinished):
        doc = {"event": "step_finished", **_result_dict(event.result)}
    elif isinstance(event, HostFinished):
        doc = {"event": "host_finished", "host": event.host, "status": event.status}
    elif isinstance(event, Message):
        doc = {"event": "message", **_message_dict(event)}
    elif isinstance(event, Progress):
        doc = {
            "event": "progress",
            "host": event.host,
            "step": event.step,
            "what": event.what,
            "done": event.done,
            "total": event.total,
            "rate": round(event.rate, 1) if event.rate is not None else None,
            "eta": round(event.eta, 1) if event.eta is not None else None,
            "at": event.at,
        }
    elif isinstance(event, BudgetExceeded):
        doc = {
            "event": "budget_exceeded",
            "fleet": event.fleet,
            "failed": event.failed,
            "hosts": event.hosts,
            "max_fail_percentage": event.max_fail_percentage,
        }
    elif isinstance(event, RunFinished):
        doc = {
            "event": "run_finished",
            "summary": summary_to_dict(event.summary, scrubber=_NO_SCRUB, extra=event.extra),
        }
    else:
        name = type(event).__name__
        doc = {"event": name, **json_safe(event)}
    doc["time"] = round(time.time(), 3)
    return scrubber.scrub_obj(json_safe(doc))


class JsonReporter:
    """Collects events and writes the run document (`json.dumps(doc, indent=2)`) on RunFinished.

    Warning and error messages seen during the run go into the document's `messages`.
    """

    def __init__(self, stream: IO[str], *, scrubber: Scrubber = SCRUBBER) -> None:
        self.stream = stream
        self.scrubber = scrubber
        self.messages: list[Message] = []
        self.document: dict[str, Any] | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, Message) and event.level in ("warning", "error"):
            self.messages.append(event)
        elif isinstance(event, RunFinished):
            self.document = summary_to_dict(
                event.summary, scrubber=self.scrubber, messages=self.messages, extra=event.extra
            )
            self.stream.write(json.dumps(self.document, indent=2) + "\n")
            self.stream.flush()

    def close(self) -> None:
        pass


class JsonLinesReporter:
    """Writes one JSON object per event as it happens, flushed, for CI log streaming."""

    def __init__(self, stream: IO[str], *, scrubber: Scrubber = SCRUBBER) -> None:
        self.stream = stream
        self.scrubber = scrubber
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = json.dumps(event_to_dict(event, self.scrubber), separators=(",", ":"))
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        pass
