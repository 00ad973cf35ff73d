"""Everything that can be known wrong about a loaded playbook without touching a host: host
patterns and selections of zero hosts, the rollout graph, vars (cycles, undefined names),
references to outputs a module does not have, and every template rendered for every host of
its step's fleet, its arguments converted as the module will (engine/execute/argcheck.py).
`playbook validate`, `plan`, `run`, `apply` and `rollback` call it before any host is contacted.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from engine.errors import PlaybookError, ValidationErrors
from engine.execute.argcheck import StepCheck
from engine.execute.context import HostContexts
from engine.execute.graph import build_graph
from engine.execute.options import RunOptions, resolve_fleets
from engine.execute.placeholders import output_errors, output_namespaces
from engine.execute.selection import empty_selections
from engine.model.config import CONTROLLER, Loaded

__all__ = ["check", "SECRET_PLACEHOLDER"]

SECRET_PLACEHOLDER = "********"
"""What a declared secret renders as when `validate` is not given its value."""


def check(
    loaded: Loaded,
    extra_vars: Mapping[str, Any] | None = None,
    limit: str | None = None,
    *,
    recorded: Mapping[tuple[str, str | None], Mapping[str, Any]] | None = None,
) -> None:
    """Raise ValidationErrors listing every problem found without a host (see the module doc).
    Declared secrets missing from `extra_vars` (`validate` has no values) render as
    SECRET_PLACEHOLDER; `recorded` are the outputs a rollback's target release recorded."""
    pb, inv = loaded.playbook, loaded.inventory
    extra = {name: SECRET_PLACEHOLDER for name in pb.secrets}
    extra.update(extra_vars or {})
    fleet_hosts = resolve_fleets(pb, inv, limit)
    _raise(empty_selections(pb, inv, limit, fleet_hosts))  # nothing below means anything without hosts
    build_graph(pb, fleet_hosts)  # the rollout must be orderable (serial batches vs barriers)
    contexts = HostContexts(pb, inv, RunOptions(mode="plan", limit=limit, extra_vars=extra), started=time.time())
    errors: list[PlaybookError] = []
    reported: set[str] = set()
    contexts_ok: dict[str | None, dict[str, Any]] = {}
    for h in [None, *dict.fromkeys(h for hs in fleet_hosts.values() for h in hs)]:
        try:
            contexts_ok[h] = contexts.host(h)
        except PlaybookError as exc:
            if exc.message not in reported:  # a playbook var's mistake is every host's: once
                reported.add(exc.message)
                where = f"host {h}: " if h else ""
                errors.append(type(exc)(exc.message, location=exc.location, path=f"{where}{exc.path}".rstrip(": ")))
    missing, bad = output_errors(pb, recorded)
    errors.extend(missing)
    steps_ns, sources_ns = output_namespaces(pb, recorded)
    for step in pb.steps:
        hosts: list[str | None] = [None] if step.fleet == CONTROLLER else list(fleet_hosts.get(step.fleet, []))
        found = StepCheck(step, hosts, {p for sid, p in bad if sid == step.id})
        for h in hosts:
            if h in contexts_ok:
                found.host(h, {**contexts_ok[h], "steps": steps_ns, "sources": sources_ns})
        errors.extend(found.errors())
    _raise(errors)


def _raise(errors: list[PlaybookError]) -> None:
    if errors:
        raise ValidationErrors(errors) if len(errors) > 1 else errors[0]
