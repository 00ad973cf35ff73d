"""The loaded, validated shape of a playbook and an inventory.

The loader builds these from YAML after schema validation; everything downstream (graph,
planner, executor) reads only these. Each object keeps the `Location` it came from so later
errors (an undefined variable at render time, a cycle) still point at the YAML line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from engine.errors import Location

__all__ = [
    "CONTROLLER",
    "Host",
    "Group",
    "Inventory",
    "Fleet",
    "Source",
    "Step",
    "Playbook",
    "Loaded",
]

CONTROLLER = "controller"
"""The reserved fleet name for steps that run once, on the machine running playbook."""


@dataclass(frozen=True)
class Host:
    """One inventory host with its connection settings (vars are resolved per run)."""

    name: str
    connection: str = "ssh"  # "ssh" | "local" | "kubernetes"
    address: str | None = None
    port: int = 22
    user: str | None = None
    key: str | None = None
    known_hosts: str | None = None
    # `connection: kubernetes`: a cluster namespace as a target; steps run on the controller
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)
    groups: tuple[str, ...] = ()  # direct groups, in file order
    location: Location | None = None

    @property
    def hostname(self) -> str:
        return self.address or self.name


@dataclass(frozen=True)
class Group:
    """A named set of hosts; `children` are other groups whose hosts belong here too."""

    name: str
    hosts: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    vars: Mapping[str, Any] = field(default_factory=dict)
    location: Location | None = None


@dataclass(frozen=True)
class Inventory:
    """Hosts and groups from one inventory file. `all` always exists and holds every host."""

    path: str
    hosts: Mapping[str, Host]
    groups: Mapping[str, Group]
    vars: Mapping[str, Any] = field(default_factory=dict)  # the `all` group's vars
    # connection defaults applied to hosts that do not set their own
    defaults: Mapping[str, Any] = field(default_factory=dict)
    notify: tuple[Mapping[str, Any], ...] = ()  # webhooks for every run against it (engine/report/notify.py)
    state: str = ""  # `state:`: the shared state backend of runs against it ("" = local; docs/scale.md)

    @cached_property
    def memberships(self) -> Mapping[str, tuple[str, ...]]:
        """Each host's groups, direct or through children, parents first: worked out once
        (not once per host and group: validating 150,000 hosts took 34 s that way)."""
        return _memberships(self)

    @cached_property
    def members(self) -> Mapping[str, tuple[str, ...]]:
        """Each group's hosts, its children's included, in inventory order (`all`: every host)."""
        out: dict[str, list[str]] = {g: [] for g in self.groups}
        for host, groups in self.memberships.items():
            for g in groups:
                out.setdefault(g, []).append(host)
        out["all"] = list(self.hosts)
        return {g: tuple(hosts) for g, hosts in out.items()}


@dataclass(frozen=True)
class Fleet:
    """Where steps run and how: a host pattern plus rollout policy.

    `serial` is a batch size: an int count, or a string like "25%". `max_fail_percentage`
    is one failure budget for the whole run over this fleet's hosts. `forks` caps how many of
    this fleet's hosts run at once (the CLI's --forks caps the whole run).
    """

    name: str
    hosts: str  # a host pattern: names, groups, globs, '!' exclusion, '&' intersection
    serial: int | str | None = None
    max_fail_percentage: float | None = None
    forks: int | None = None
    lock: bool = True  # take the fleet's deploy lock on every host for the length of a run
    location: Location | None = None


@dataclass(frozen=True)
class Source:
    """An artifact a deploy needs; implemented by the module registered for its `type`."""

    name: str
    type: str  # "local", "git", "s3", "npm", "image" ...
    module: str  # the module that fetches it, e.g. "local_tree", "s3_fetch"
    args: Mapping[str, Any] = field(default_factory=dict)
    location: Location | None = None


@dataclass(frozen=True)
class Step:
    """One named call of a module on a fleet (or on the controller).

    `args` are raw (still templates). `needs` lists step ids and `sources.<name>` ids this step
    waits for, declared plus inferred from references in `args`.
    """

    id: str
    module: str
    fleet: str  # a fleet name, or CONTROLLER
    args: Mapping[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 1.0
    when: str | None = None
    description: str = ""
    location: Location | None = None
    args_locations: Mapping[tuple, Location] = field(default_factory=dict)
    when_location: Location | None = None


@dataclass(frozen=True)
class Playbook:
    """A whole playbook file after validation."""

    path: str
    name: str
    sources: Mapping[str, Source]
    fleets: Mapping[str, Fleet]
    steps: tuple[Step, ...]
    vars: Mapping[str, Any] = field(default_factory=dict)
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # name -> {"env": X} | {"file": P}
    inventory: str | None = None  # default inventory path, relative to the playbook
    location: Location | None = None
    notify: tuple[Mapping[str, Any], ...] = ()  # webhooks told about its runs (engine/report/notify.py)
    vars_locations: Mapping[str, Location] = field(default_factory=dict)  # where each of `vars` is written
    state: str = ""  # `state:`: the shared state backend of its runs ("" = local; docs/scale.md)

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)


@dataclass(frozen=True)
class Loaded:
    """A playbook with the inventory it runs against, both loaded and validated."""

    playbook: Playbook
    inventory: Inventory


def _group_depths(inventory: Inventory) -> dict[str, int]:
    """Depth of each group below the root (a group nobody lists as a child has depth 1); a
    cycle (refused by the loader) counts once."""
    parents: dict[str, list[str]] = {g: [] for g in inventory.groups}
    for g in inventory.groups.values():
        for child in g.children:
            parents.setdefault(child, []).append(g.name)
    depths: dict[str, int] = {}
    for start in inventory.groups:  # depth-first without recursion: a chain of groups can be long
        stack, on_path = [start], {start}
        while stack:
            name = stack[-1]
            pending = [p for p in parents.get(name, ()) if p not in depths and p not in on_path]
            if pending:
                stack.append(pending[0])
                on_path.add(pending[0])
                continue
            depths[name] = 1 + max((depths.get(p, 0) for p in parents.get(name, ())), default=0)
            stack.pop()
            on_path.discard(name)
    return {g: depths[g] for g in inventory.groups}


def _memberships(inventory: Inventory) -> dict[str, tuple[str, ...]]:
    """Every host's groups, directly or through children, parents first (`Inventory.memberships`).
    Hosts listed in the same groups share one walk up the tree."""
    direct: dict[str, list[str]] = {h: [] for h in inventory.hosts}
    parents: dict[str, list[str]] = {}
    for g in inventory.groups.values():
        for h in g.hosts:
            direct.setdefault(h, []).append(g.name)
        for child in g.children:
            parents.setdefault(child, []).append(g.name)
    depths = _group_depths(inventory)
    walked: dict[frozenset[str], tuple[str, ...]] = {}
    out = {}
    for host, groups in direct.items():
        key = frozenset(groups)
        if key not in walked:
            seen, stack = set(key), list(key)
            while stack:
                for parent in parents.get(stack.pop(), ()):
                    if parent not in seen:
                        seen.add(parent)
                        stack.append(parent)
            walked[key] = tuple(sorted(seen, key=lambda n: (depths.get(n, 1), n)))
        out[host] = walked[key]
    return out
