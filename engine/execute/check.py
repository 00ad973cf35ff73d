"""Everything that can be known wrong about a loaded playbook without touching a host: host
patterns and selections of zero hosts, the rollout graph, vars (cycles, undefined names),
references to outputs a module does not have, and every template rendered for every host of
its step's fleet, its arguments converted as the module will (engine/execute/argcheck.py).
`playbook validate`, `plan`, `run`, `apply` and `rollback` call it before any host is contacted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from engine.errors import PlaybookError, ValidationErrors
from engine.execute.argcheck import StepCheck
from engine.execute.argv_secrets import secrets_in_argv
from engine.execute.context import HostContexts
from engine.execute.graph import build_graph
from engine.execute.options import RunOptions, check_release_id, resolve_fleets
from engine.execute.placeholders import dotted, output_errors, output_namespaces, step_location
from engine.execute.selection import empty_selections
from engine.model.config import CONTROLLER, Loaded
from engine.model.hostvars import merged_vars

__all__ = ["check", "SECRET_PLACEHOLDER"]

SECRET_PLACEHOLDER = "********"
"""What a declared secret renders as when `validate` is not given its value."""


def check(
    loaded: Loaded,
    extra_vars: Mapping[str, Any] | None = None,
    limit: str | None = None,
    *,
    recorded: Mapping[tuple[str, str | None], Mapping[str, Any]] | None = None,
    release_id: str | None = None,
) -> None:
    """Raise ValidationErrors listing every problem found without a host (see the module doc).
    Declared secrets missing from `extra_vars` (`validate` has no values) render as
    SECRET_PLACEHOLDER; `recorded` are the outputs a rollback's target release recorded;
    `release_id` is a `--release-id` given."""
    pb, inv = loaded.playbook, loaded.inventory
    if release_id is not None:
        check_release_id(release_id)
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
            for one in exc.errors if isinstance(exc, ValidationErrors) else [exc]:
                located = _var_error(one, loaded, h, extra)
                key = f"{located.location} {located}"
                if key not in reported:  # a playbook var's mistake is every host's: once
                    reported.add(key)
                    errors.append(located)
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
    errors += secrets_in_argv(pb, extra, locate=step_location, dotted=dotted)
    _raise(errors)


def _var_error(exc: PlaybookError, loaded: Loaded, host: str | None, extra: Mapping[str, Any]) -> PlaybookError:
    """A mistake in vars (a cycle, an undefined name) located where its first var is written."""
    pb, inv = loaded.playbook, loaded.inventory
    m = re.search(r"cycle: ([^ ]+) ->", exc.message) or re.fullmatch(r"vars\.([^.\[]+).*", exc.path)
    if not m:
        return type(exc)(exc.message, location=exc.location, path=f"host {host}: {exc.path}" if host else exc.path)
    name = m.group(1)
    if host is None:
        origin = "extra vars (-e)" if name in extra else "playbook vars"
    else:
        origin = merged_vars(inv, host, playbook_vars=pb.vars, extra_vars=extra)[1].get(name, "")
    location, path = None, f"vars.{name}"
    if origin == "playbook vars":
        location = pb.vars_locations.get(name, pb.location)
    elif origin == "extra vars (-e)":
        path = f"-e {name}"
    elif origin.startswith("host "):
        location, path = inv.hosts[host].location if host else None, f"hosts.{host}.vars.{name}"
    elif origin.startswith("group ") and origin != "group all":
        group = origin[len("group ") :]
        location, path = inv.groups[group].location, f"groups.{group}.vars.{name}"
    else:
        path = f"{inv.path}: vars.{name}"
    return type(exc)(exc.message, location=location, path=path)


def _raise(errors: list[PlaybookError]) -> None:
    if errors:
        raise ValidationErrors(errors) if len(errors) > 1 else errors[0]
