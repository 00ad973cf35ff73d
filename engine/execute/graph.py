"""The execution graph: a networkx DAG of (step, host) nodes.

Controller steps are one node (host None). `needs:` between two steps of the same fleet links
them per host, so each host walks its own chain with no barrier between steps. Edges that cross
fleets, or go between the controller and a fleet, wait for every node on the other side (through
one barrier node, so edges stay linear in hosts). Rolling `serial` batches are barriers too:
batch k+1 of a fleet starts once batch k has finished every step of that fleet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import networkx as nx

from engine.errors import GraphError
from engine.model.config import CONTROLLER, Fleet, Playbook

__all__ = [
    "Node",
    "ExecGraph",
    "build_graph",
    "step_graph",
    "step_order",
    "batches",
    "to_mermaid",
    "to_dot",
    "fleet_of",
    "hosts_in_order",
]


@dataclass(frozen=True, order=True)
class Node:
    """One unit of work: a step on a host, a controller step (host None), or a barrier.

    `barrier` is "" for work, "needs" for a cross-fleet dependency (a failure behind it skips
    what waits on it) and "batch" for a rolling-batch boundary (it orders, it does not carry
    failures: those count against the failure budget instead)."""

    step: str
    host: str | None = None
    barrier: str = ""

    def __str__(self) -> str:
        return f"{self.step}@{self.host}" if self.host else self.step


@dataclass
class ExecGraph:
    graph: nx.DiGraph
    fleet_hosts: Mapping[str, Sequence[str]]
    step_index: Mapping[str, int]  # topological rank of each step
    batch_of: Mapping[tuple[str, str], int]  # (fleet, host) -> batch number

    def priority(self, node: Node) -> tuple:
        """Dispatch order: earlier batches, then host order, then step order (depth-first per host)."""
        if node.barrier:
            return (-1, 0, 0, node.step)
        if node.host is None:
            return (-1, 0, self.step_index.get(node.step, 0), node.step)
        return (0, self._host_rank.get(node.host, 0), self.step_index.get(node.step, 0), node.step)

    def __post_init__(self) -> None:
        rank: dict[str, int] = {}
        for hosts in self.fleet_hosts.values():
            for h in hosts:
                rank.setdefault(h, len(rank))
        self._host_rank = rank

    def work_nodes(self) -> list[Node]:
        return [n for n in self.graph.nodes if not n.barrier]


def step_graph(playbook: Playbook) -> nx.DiGraph:
    """Step-level DAG (ids only), with a cycle check that names the cycle."""
    g = nx.DiGraph()
    ids = [s.id for s in playbook.steps]
    for s in playbook.steps:
        g.add_node(s.id, step=s)
    for s in playbook.steps:
        for dep in s.needs:
            if dep not in g:
                raise GraphError(f"step '{s.id}' needs '{dep}', which is not a step or source", location=s.location)
            g.add_edge(dep, s.id)
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        return g
    path = [a for a, _ in cycle] + [cycle[0][0]]
    first = min(path[:-1], key=ids.index)
    raise GraphError(f"steps form a cycle: {' -> '.join(path)}", location=playbook.step(first).location)


def step_order(playbook: Playbook) -> list[str]:
    """Topological order of steps, ties broken by their order in the file."""
    g = step_graph(playbook)
    pos = {s.id: i for i, s in enumerate(playbook.steps)}
    return list(nx.lexicographical_topological_sort(g, key=lambda n: pos[n]))


def batches(hosts: Sequence[str], serial: int | str | None) -> list[list[str]]:
    """Split hosts into rolling batches. `serial` is a count or "N%" (of the fleet, rounded up,
    at least 1). None means one batch."""
    if not hosts:
        return []
    if serial is None:
        return [list(hosts)]
    if isinstance(serial, str) and serial.endswith("%"):
        size = max(1, math.ceil(len(hosts) * float(serial[:-1]) / 100.0))
    else:
        size = max(1, int(serial))
    return [list(hosts[i : i + size]) for i in range(0, len(hosts), size)]


def build_graph(playbook: Playbook, fleet_hosts: Mapping[str, Sequence[str]]) -> ExecGraph:
    """Expand the step DAG over the hosts each fleet resolved to."""
    sg = step_graph(playbook)
    order = step_order(playbook)
    index = {sid: i for i, sid in enumerate(order)}
    g = nx.DiGraph()
    steps = {s.id: s for s in playbook.steps}

    def nodes_of(step_id: str) -> list[Node]:
        s = steps[step_id]
        if s.fleet == CONTROLLER:
            return [Node(step_id)]
        return [Node(step_id, h) for h in fleet_hosts.get(s.fleet, ())]

    for sid in order:
        for n in nodes_of(sid):
            g.add_node(n)

    for dep, sid in sg.edges:
        a, b = steps[dep], steps[sid]
        a_nodes, b_nodes = nodes_of(dep), nodes_of(sid)
        if a.fleet == b.fleet and a.fleet != CONTROLLER:
            for n in b_nodes:
                g.add_edge(Node(dep, n.host), n)
        elif len(a_nodes) == 1 or len(b_nodes) == 1:
            for x in a_nodes:
                for y in b_nodes:
                    g.add_edge(x, y)
        else:
            bar = Node(f"{dep}=>{sid}", barrier="needs")
            g.add_node(bar)
            for x in a_nodes:
                g.add_edge(x, bar)
            for y in b_nodes:
                g.add_edge(bar, y)

    batch_of: dict[tuple[str, str], int] = {}
    for fname, fleet in playbook.fleets.items():
        hosts = list(fleet_hosts.get(fname, ()))
        parts = batches(hosts, fleet.serial)
        fleet_steps = [sid for sid in order if steps[sid].fleet == fname]
        for k, part in enumerate(parts):
            for h in part:
                batch_of[(fname, h)] = k
        for k in range(1, len(parts)):
            bar = Node(f"{fname}#batch{k}", barrier="batch")
            g.add_node(bar)
            for h in parts[k - 1]:
                for sid in fleet_steps:
                    g.add_edge(Node(sid, h), bar)
            for h in parts[k]:
                for sid in fleet_steps:
                    g.add_edge(bar, Node(sid, h))
    if not nx.is_directed_acyclic_graph(g):
        cycle = [str(a) for a, _ in nx.find_cycle(g)]
        raise GraphError(
            "the rollout cannot be ordered: a step waits for every host while `serial` batches "
            f"wait for that step ({' -> '.join(cycle[:6])}{' ...' if len(cycle) > 6 else ''})"
        )
    return ExecGraph(g, fleet_hosts, index, batch_of)


def _label(playbook: Playbook, sid: str) -> str:
    s = playbook.step(sid)
    where = "controller" if s.fleet == CONTROLLER else f"fleet {s.fleet}"
    return f"{sid}<br/>{s.module} on {where}"


def _mermaid_id(sid: str) -> str:
    return "s_" + "".join(c if c.isalnum() else "_" for c in sid)


def to_mermaid(playbook: Playbook) -> str:
    """The step DAG as a mermaid flowchart (renders in GitLab and GitHub Markdown)."""
    sg = step_graph(playbook)
    lines = ["flowchart TD"]
    for sid in step_order(playbook):
        label = _label(playbook, sid).replace('"', "'")
        lines.append(f'    {_mermaid_id(sid)}["{label}"]')
    for a, b in sg.edges:
        lines.append(f"    {_mermaid_id(a)} --> {_mermaid_id(b)}")
    return "\n".join(lines) + "\n"


def to_dot(playbook: Playbook) -> str:
    """The step DAG in Graphviz dot."""
    sg = step_graph(playbook)
    lines = [f'digraph "{playbook.name}" {{', "    rankdir=TB;", "    node [shape=box];"]
    for sid in step_order(playbook):
        label = _label(playbook, sid).replace("<br/>", "\\n").replace('"', "'")
        lines.append(f'    "{sid}" [label="{label}"];')
    for a, b in sg.edges:
        lines.append(f'    "{a}" -> "{b}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def hosts_in_order(fleet_hosts: Mapping[str, Iterable[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for hosts in fleet_hosts.values():
        for h in hosts:
            seen.setdefault(h, None)
    return list(seen)


def fleet_of(playbook: Playbook, name: str) -> Fleet:
    return playbook.fleets[name]
