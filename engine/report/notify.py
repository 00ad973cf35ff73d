"""Webhook notifications (`notify:` in the playbook or the inventory; docs/notifications.md).

A `Notifier` is an event subscriber. It turns the run's events into payloads — `started`,
`step_failed` (one per failed or unreachable host and step), `budget_exceeded`, `finished`, and
`rolled_back` instead of `finished` for a rollback — and POSTs each to every target that asked
for it, from one background thread, so a slow or dead webhook never holds a step. A failed
attempt (connection error, timeout, a 5xx or 429 answer) is retried up to `retries` times; what
still fails is reported through `warn` and dropped. At the end of the run `close` waits for
what is pending at most the largest `timeout` of the targets, then gives up. Nothing a webhook
does changes the run's exit status.

Payloads pass the secret scrubber (a secret in a step's message never leaves), and a URL is
never shown in a warning (a Slack webhook URL is itself a secret).
"""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.model.events import BudgetExceeded, Event, RunFinished, RunStarted, StepFinished
from engine.model.results import Status
from engine.secrets import SCRUBBER

__all__ = ["Target", "Notifier", "payload", "slack_payload"]

EVENTS = ("started", "step_failed", "budget_exceeded", "finished", "rolled_back")
_STOP = object()


@dataclass(frozen=True)
class Target:
    """One webhook: where, in which format, for which events, how patiently."""

    url: str
    format: str = "json"
    events: frozenset[str] = frozenset(EVENTS)
    timeout: float = 5.0
    retries: int = 2
    label: str = "webhook"  # what warnings call it (never the URL)

    @classmethod
    def from_config(cls, spec: Mapping[str, Any], url: str, label: str) -> Target:
        """A target from a `notify:` entry whose `url` template rendered to `url`."""
        return cls(
            url=url,
            format=str(spec.get("format", "json")),
            events=frozenset(spec.get("events") or EVENTS),
            timeout=float(spec.get("timeout", 5)),
            retries=int(spec.get("retries", 2)),
            label=label,
        )


def payload(event: str, run: Mapping[str, Any], **details: Any) -> dict[str, Any]:
    """The generic JSON payload: the event, the run it belongs to, and the event's details."""
    return {"event": event, "time": round(time.time(), 3), "run": dict(run), **details}


def slack_payload(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack-compatible message (`{"text": ...}`) saying the same as `doc`."""
    run = doc["run"]
    what = f"*{run.get('playbook')}* run `{run.get('run_id')}`"
    event = doc["event"]
    if event == "started":
        text = (
            f":rocket: {what} started ({run.get('mode')}, release `{run.get('release_id')}`, {doc.get('hosts')} hosts)"
        )
    elif event == "step_failed":
        text = f":x: {what}: step `{doc.get('step')}` {doc.get('status')} on `{doc.get('host')}`: {doc.get('message')}"
    elif event == "budget_exceeded":
        text = (
            f":octagonal_sign: {what}: fleet `{doc.get('fleet')}` exceeded its failure budget "
            f"({doc.get('failed')} of {doc.get('hosts')} hosts failed); no new work starts"
        )
    else:
        icon = ":white_check_mark:" if doc.get("exit_code") == 0 else ":warning:"
        verb = "rolled back" if event == "rolled_back" else "finished"
        text = (
            f"{icon} {what} {verb}: exit {doc.get('exit_code')}, {doc.get('changed')} changed, "
            f"failed hosts: {', '.join(doc.get('failed_hosts') or []) or 'none'}"
        )
    return {"text": text}


@dataclass
class _Pending:
    target: Target
    event: str
    body: bytes


@dataclass
class Notifier:
    """Event subscriber that sends notifications to `targets` (see the module docstring)."""

    targets: Sequence[Target]
    playbook: str
    release_id: str = ""
    rollback: bool = False
    warn: Callable[[str], None] = lambda _text: None
    _queue: queue.Queue = field(default_factory=queue.Queue, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _run: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _closed: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    sent: list[tuple[str, str]] = field(default_factory=list, init=False)  # (target label, event) delivered

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._run = {
                "run_id": event.run_id,
                "playbook": self.playbook,
                "file": event.playbook,
                "mode": event.mode,
                "release_id": self.release_id,
            }
            self._send("started", hosts=len(event.hosts), steps=list(event.steps))
        elif isinstance(event, StepFinished) and event.result.status in (Status.FAILED, Status.UNREACHABLE):
            r = event.result
            self._send(
                "step_failed", step=r.step, host=r.host or "controller", status=r.status.value, message=r.message
            )
        elif isinstance(event, BudgetExceeded):
            self._send(
                "budget_exceeded",
                fleet=event.fleet,
                failed=event.failed,
                hosts=event.hosts,
                max_fail_percentage=event.max_fail_percentage,
            )
        elif isinstance(event, RunFinished):
            s = event.summary
            self._send(
                "rolled_back" if self.rollback else "finished",
                exit_code=s.exit_code(),
                changed=s.changes,
                failed_hosts=list(s.failed_hosts),
                interrupted=s.interrupted,
                aborted=s.aborted,
                duration=round(s.finished - s.started, 3) if s.finished else None,
            )

    def _send(self, event: str, **details: Any) -> None:
        doc = SCRUBBER.scrub_obj(payload(event, self._run, **details))
        for target in self.targets:
            if event not in target.events:
                continue
            body = slack_payload(doc) if target.format == "slack" else doc
            self._queue.put(_Pending(target, event, json.dumps(body, default=str).encode()))
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="playbook-notify", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            self._deliver(item)

    def _deliver(self, item: _Pending) -> None:
        target, event = item.target, item.event
        last = ""
        for attempt in range(target.retries + 1):
            if attempt:
                time.sleep(min(0.5 * 2 ** (attempt - 1), target.timeout))
            try:
                req = urllib.request.Request(
                    target.url,
                    data=item.body,
                    method="POST",
                    headers={"Content-Type": "application/json", "User-Agent": "playbook-notify"},
                )
                with urllib.request.urlopen(req, timeout=target.timeout) as resp:
                    resp.read(65536)
                self.sent.append((target.label, event))
                return
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if exc.code < 500 and exc.code != 429:
                    break  # the webhook refuses this payload: asking again will not help
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                last = type(reason).__name__ if isinstance(reason, BaseException) else str(reason)
        if not self._closed.is_set():  # after `close` gave up, its own warning has said so
            self.warn(f"notification {target.label}: could not deliver '{event}' ({last}); giving up")

    def close(self) -> None:
        """Wait for pending notifications, at most the largest target `timeout`, then stop (what
        is still pending is dropped, with a warning); never raises."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(max((t.timeout for t in self.targets), default=0.0))
        self._closed.set()
        if self._thread.is_alive():
            self.warn("notifications still pending at the end of the run were dropped (webhook too slow)")
