"""What a template sees on each host: run facts, groups, the host's merged vars, and the outputs
of the steps and sources that finished before it (docs/templating.md).

`HostContexts` builds a host's context once per run and shares it between threads; `check`
uses it without building a scheduler. `Outputs` is the run's table of finished nodes' outputs,
written by the scheduler and read into the `steps` and `sources` namespaces.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from engine import templating
from engine.execute.options import RunOptions
from engine.model.config import CONTROLLER, Inventory, Playbook
from engine.model.hostvars import host_groups, merged_vars

__all__ = ["HostContexts", "Outputs"]


class Outputs:
    """Outputs of finished nodes by host (None: the controller), then step id; thread-safe.

    Kept per host so that what one node's template sees costs that host's steps, not every
    output of the fleet: a 200-host run of 20 steps would otherwise copy 4000 entries per node."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_host: dict[str | None, dict[str, Mapping[str, Any]]] = {}

    def record(self, step: str, host: str | None, outputs: Mapping[str, Any]) -> None:
        with self._lock:
            self._by_host.setdefault(host, {})[step] = outputs

    def namespaces(self, host: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(`steps`, `sources`) as a template on `host` sees them: controller outputs and the
        host's own."""
        steps_ns: dict[str, Any] = {}
        sources_ns: dict[str, Any] = {}
        with self._lock:
            mine = [*self._by_host.get(None, {}).items()]
            if host is not None:
                mine += self._by_host.get(host, {}).items()
        for sid, outs in mine:
            if sid.startswith("sources."):
                sources_ns[sid[len("sources.") :]] = dict(outs)
            else:
                steps_ns[sid] = dict(outs)
        return steps_ns, sources_ns


class HostContexts:
    """The template context of every host of one plan or run, each built once."""

    def __init__(self, playbook: Playbook, inventory: Inventory, options: RunOptions, *, started: float) -> None:
        self.playbook = playbook
        self.inventory = inventory
        self.opts = options
        self.started = started
        self._lock = threading.Lock()
        self._groups: dict[str, list[str]] | None = None
        self._host_vars: dict[str, dict[str, Any]] = {}

    def host(self, host: str | None) -> dict[str, Any]:
        """Template context of a host (controller: playbook vars and extra vars only)."""
        key = host or ""
        with self._lock:
            cached = self._host_vars.get(key)
        if cached is not None:
            return cached
        facts = {
            "run": {
                "id": self.opts.run_id,
                "mode": self.opts.mode,
                "time": self.started,
                "playbook": self.playbook.name,
            },
            "release_id": self.opts.release_id,
            "playbook_dir": os.path.dirname(os.path.abspath(self.playbook.path)),
            "groups": self._groups_map(),
        }
        if host is None:
            raw = dict(self.playbook.vars)
            raw.update(self.opts.extra_vars)
            facts["host"] = {"name": CONTROLLER, "groups": []}
        else:
            raw, _ = merged_vars(
                self.inventory, host, playbook_vars=self.playbook.vars, extra_vars=self.opts.extra_vars
            )
            h = self.inventory.hosts[host]
            facts["host"] = {
                "name": host,
                "address": h.hostname,
                "port": h.port,
                "user": h.user,
                "groups": host_groups(self.inventory, host),
            }
        ctx = templating.resolve_vars(raw, base=facts)
        ctx.update(facts)
        with self._lock:
            self._host_vars[key] = ctx
        return ctx

    def for_step(self, host: str | None, outputs: Outputs) -> dict[str, Any]:
        """A host's context plus the `steps` and `sources` outputs known so far."""
        ctx = dict(self.host(host))
        ctx["steps"], ctx["sources"] = outputs.namespaces(host)
        return ctx

    def _groups_map(self) -> dict[str, list[str]]:
        with self._lock:
            if self._groups is None:
                self._groups = {g: list(hosts) for g, hosts in self.inventory.members.items()}
            return self._groups
