"""Everything that can be known wrong about a loaded playbook without touching a host: host
patterns, vars that reference each other, and templates naming undefined variables (per host of
the step's fleet). `playbook validate`, `plan` and `run` call it before any host is contacted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from engine import templating
from engine.errors import PlaybookError, TemplateError, ValidationErrors, suggest
from engine.execute.argcheck import check_choices
from engine.execute.context import HostContexts
from engine.execute.graph import build_graph
from engine.execute.options import RunOptions, resolve_fleets
from engine.model.config import CONTROLLER, Loaded
from engine.model.hostvars import merged_vars

__all__ = ["check"]


def _walk(value: Any, path: tuple) -> Iterator[tuple[tuple, str]]:
    if isinstance(value, str):
        if templating.is_template(value):
            yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _walk(v, path + (k,))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk(v, path + (i,))


def check(loaded: Loaded, extra_vars: Mapping[str, Any] | None = None, limit: str | None = None) -> None:
    """Everything that can be known wrong without touching a host: host patterns, the rollout
    graph, vars that reference each other, and templates naming undefined variables (per host
    of the step's fleet). Raises ValidationErrors listing every problem."""
    pb, inv = loaded.playbook, loaded.inventory
    extra = dict(extra_vars or {})
    errors: list[PlaybookError] = []
    fleet_hosts = resolve_fleets(pb, inv, limit)
    build_graph(pb, fleet_hosts)  # the rollout must be orderable (serial batches vs barriers)
    contexts = HostContexts(pb, inv, RunOptions(mode="plan", limit=limit, extra_vars=extra), started=time.time())
    known: dict[str | None, set[str]] = {}
    hosts_needed = {None} | {h for hs in fleet_hosts.values() for h in hs}
    for h in hosts_needed:
        try:
            contexts.host(h)
        except PlaybookError as exc:
            errors.append(type(exc)(exc.message, path=f"host {h or CONTROLLER}: {exc.path}".rstrip(": ")))
        if h is None:
            names = set(pb.vars) | set(extra)
        else:
            names = set(merged_vars(inv, h, playbook_vars=pb.vars, extra_vars=extra)[0])
        known[h] = names | set(templating.BUILTIN_NAMES)
    for step in pb.steps:
        hosts: list[str | None] = [None] if step.fleet == CONTROLLER else list(fleet_hosts.get(step.fleet, []))
        templates = list(_walk(dict(step.args), ("args",)))
        if step.when:
            templates.append((("when",), step.when if templating.is_template(step.when) else "{{ " + step.when + " }}"))
        for path, source in templates:
            try:
                names = templating.undeclared(source)
            except TemplateError as exc:
                errors.append(TemplateError(exc.message, location=_loc(step, path), path=_dotted(step.id, path)))
                continue
            reported: set[str] = set()
            for h in hosts:
                for name in sorted(names - known[h] - reported):
                    reported.add(name)
                    who = f" for host {h}" if h else ""
                    errors.append(
                        TemplateError(
                            f"undefined variable '{name}'{who}" + suggest(name, known[h]),
                            location=_loc(step, path),
                            path=_dotted(step.id, path),
                        )
                    )
        errors += check_choices(step, hosts, contexts.host, lambda path, step=step: _loc(step, path))
    if errors:
        raise ValidationErrors(errors) if len(errors) > 1 else errors[0]


def _loc(step: Any, path: tuple) -> Any:
    locs = getattr(step, "args_locations", {}) or {}
    if path and path[0] == "args":
        inner = path[1:]
        while inner:
            if inner in locs:
                return locs[inner]
            inner = inner[:-1]
    return step.location


def _dotted(step_id: str, path: tuple) -> str:
    out = f"steps.{step_id}"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out
