"""Values that flow out of planning and applying: diffs, plans, step results.

Results are plain frozen values with an explicit status, never bare booleans. A plan that
changes nothing says why; a diff is data that presenters render as text, JSON or Markdown.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Change",
    "Status",
    "Diff",
    "Plan",
    "StepResult",
    "UNKNOWN",
    "UnknownValue",
    "RunSummary",
]


class Change(str, enum.Enum):
    """What a plan says a step would do."""

    WILL_CHANGE = "will_change"
    NO_CHANGE = "no_change"
    UNKNOWN = "unknown"


class Status(str, enum.Enum):
    """What a step did (or, in a dry run, would do) on one host."""

    OK = "ok"
    CHANGED = "changed"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNREACHABLE = "unreachable"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Diff:
    """One change a step would make, as data.

    `header` names the thing (a path, a resource); `before`/`after` are text (None when the thing
    does not exist on that side). `items` lists per-entry changes for trees, e.g.
    `("+", "index.html")`, `("~", "app.js")`, `("-", "old.css")`.
    """

    header: str
    before: str | None = None
    after: str | None = None
    items: tuple[tuple[str, str], ...] = ()
    binary: bool = False
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "header": self.header,
            "before": self.before,
            "after": self.after,
            "items": [list(i) for i in self.items],
            "binary": self.binary,
            "truncated": self.truncated,
        }


class UnknownValue:
    """An output that is known only once an upstream step has been applied (dry run only)."""

    _instance: UnknownValue | None = None

    def __new__(cls) -> UnknownValue:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<unknown until applied>"

    def __reduce__(self) -> str:
        return "UNKNOWN"


UNKNOWN = UnknownValue()


@dataclass(frozen=True)
class Plan:
    """A module's answer to "what would you do here?".

    `change` says will-change / no-change / unknown and `reason` says why. `diffs` is what a
    reviewer sees. `data` is private to the module: whatever `apply` needs to do exactly what
    was planned. `outputs` are values later steps may reference (`steps.<id>.<name>`), with
    `UNKNOWN` for those known only after apply. `fingerprint` records what was observed, so a
    saved plan can be refused when the world has moved.
    """

    change: Change
    reason: str = ""
    diffs: tuple[Diff, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)
    fingerprint: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def no_change(cls, reason: str, **kw: Any) -> Plan:
        return cls(Change.NO_CHANGE, reason, **kw)

    @classmethod
    def will_change(cls, reason: str, **kw: Any) -> Plan:
        return cls(Change.WILL_CHANGE, reason, **kw)

    @classmethod
    def unknown(cls, reason: str, **kw: Any) -> Plan:
        return cls(Change.UNKNOWN, reason, **kw)


@dataclass(frozen=True)
class StepResult:
    """What happened when a step ran (or was planned) on one host.

    `host` is None for controller steps. `plan` is kept so reports can show the diff.
    """

    step: str
    host: str | None
    status: Status
    message: str = ""
    plan: Plan | None = None
    outputs: Mapping[str, Any] = field(default_factory=dict)
    duration: float = 0.0
    attempts: int = 1

    @property
    def failed(self) -> bool:
        return self.status in (Status.FAILED, Status.UNREACHABLE)


@dataclass
class RunSummary:
    """Everything a plan or a run produced, for reporters, history and exit codes.

    `results` holds one `StepResult` per (step, host) node that was reached, in completion order.
    `hosts` lists every targeted host; `aborted` says why new work stopped (failure budget,
    interrupt), if it did.
    """

    run_id: str
    playbook: str
    mode: str  # "plan" | "run"
    hosts: list[str]
    steps: list[str]
    results: list[StepResult] = field(default_factory=list)
    aborted: str | None = None
    interrupted: bool = False
    started: float = 0.0
    finished: float = 0.0

    def by_host(self) -> dict[str, dict[str, int]]:
        """Per host (controller steps under "controller"): count of each status."""
        counts: dict[str, dict[str, int]] = {}
        for h in self.hosts:
            counts[h] = {s.value: 0 for s in Status}
        for r in self.results:
            key = r.host or "controller"
            counts.setdefault(key, {s.value: 0 for s in Status})
            counts[key][r.status.value] += 1
        return counts

    @property
    def failed_hosts(self) -> list[str]:
        return sorted({r.host or "controller" for r in self.results if r.failed})

    @property
    def changes(self) -> int:
        """Steps that changed (run) or would change / might change (plan)."""
        return sum(1 for r in self.results if r.status in (Status.CHANGED, Status.UNKNOWN))

    def exit_code(self) -> int:
        """0 nothing to do / all ok; 2 changes planned (plan mode); 1 any failure; 130 interrupted."""
        if self.failed_hosts:
            return 1
        if self.interrupted:
            return 130
        if self.aborted:
            return 1
        if self.mode == "plan" and self.changes:
            return 2
        return 0
