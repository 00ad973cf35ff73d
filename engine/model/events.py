"""Events the engine emits while planning and running; the engine itself never prints.

A reporter (rich terminal, JSON) subscribes with a callable; tests subscribe with a list.
Events are delivered from worker threads, serialised by the `EventBus` lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.model.results import StepResult

__all__ = [
    "Event",
    "RunStarted",
    "StepStarted",
    "StepFinished",
    "HostFinished",
    "Message",
    "BudgetExceeded",
    "Progress",
    "RunFinished",
    "EventBus",
]


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class RunStarted(Event):
    run_id: str
    playbook: str
    mode: str  # "plan" | "run"
    hosts: Sequence[str]
    steps: Sequence[str]


@dataclass(frozen=True)
class StepStarted(Event):
    step: str
    host: str | None


@dataclass(frozen=True)
class StepFinished(Event):
    result: StepResult


@dataclass(frozen=True)
class HostFinished(Event):
    host: str
    status: str  # worst status of the host's steps


@dataclass(frozen=True)
class Message(Event):
    """A free-form line: a warning, a progress note from a module, an abort reason."""

    text: str
    level: str = "info"  # info | warning | error
    host: str | None = None
    step: str | None = None


@dataclass(frozen=True)
class Progress(Event):
    """How far a long transfer of one step on one host is: bytes done of `total` (None when
    unknown), the mean rate so far (bytes/s) and the estimated seconds left. Sent at most once
    a second per host (engine/execute/progress.py)."""

    host: str | None
    step: str
    what: str  # "transfer", "download", ...
    done: int
    total: int | None
    rate: float | None
    eta: float | None
    at: float = 0.0  # seconds since the run's first step started (monotonic): events' spacing


@dataclass(frozen=True)
class BudgetExceeded(Event):
    """A fleet's failure budget is spent: no new work starts (a `Message` says the same in prose)."""

    fleet: str
    failed: int
    hosts: int
    max_fail_percentage: float


@dataclass(frozen=True)
class RunFinished(Event):
    summary: Any  # engine.execute.scheduler.RunSummary
    extra: dict = field(default_factory=dict)


class EventBus:
    """Fans events out to subscribers, one at a time."""

    def __init__(self, subscribers: Sequence[Callable[[Event], None]] = ()) -> None:
        self._subs = list(subscribers)
        self._lock = threading.Lock()

    def subscribe(self, fn: Callable[[Event], None]) -> None:
        self._subs.append(fn)

    def emit(self, event: Event) -> None:
        with self._lock:
            for fn in self._subs:
                fn(event)
