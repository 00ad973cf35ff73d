"""The execution graph: a DAG of (step, host) nodes.

Controller steps are one node (host None). `needs:` between two steps of the same fleet links
them per host, so each host walks its own chain with no barrier between steps. Edges that cross
fleets, or go between the controller and a fleet, wait for every node on the other side (through
one barrier node, so edges stay linear in hosts). Rolling `serial` batches are barriers too:
batch k+1 of a fleet starts once batch k has finished every step of that fleet.

The run path keeps the DAG as adjacency dicts and orders and checks it with the standard
library's `graphlib`: importing networkx costs ~0.23 s of CPU (347 modules), a quarter of a
25-host no-change run (docs/benchmarks.md). `ExecGraph.graph` and `step_graph` give the same
DAG as a networkx `DiGraph`, imported on first use, for analysis and rendering.
"""

from __future__ import annotations

import graphlib
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.errors import GraphError
from engine.model.config import CONTROLLER, Fleet, Playbook

if TYPE_CHECKING:
    import networkx as nx

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


class _Adjacency:
    """A directed graph as insertion-ordered successor and predecessor dicts."""

    def __init__(self) -> None:
        self.succ: dict[Any, dict[Any, None]] = {}
        self.pred: dict[Any, dict[Any, None]] = {}

    def add_node(self, n: Any) -> None:
        if n not in self.succ:
            self.succ[n] = {}
            self.pred[n] = {}

    def add_edge(self, a: Any, b: Any) -> None:
        self.add_node(a)
        self.add_node(b)
        self.succ[a][b] = None
        self.pred[b][a] = None

    @property
    def edges(self) -> list[tuple[Any, Any]]:
        return [(a, b) for a, out in self.succ.items() for b in out]

    def cycle(self) -> list[Any]:
        """One cycle as its nodes in edge order (first node repeated at the end), or []."""
        try:
            graphlib.TopologicalSorter(self.pred).prepare()
        except graphlib.CycleError as e:
            return list(e.args[1])
        return []

    def to_networkx(self) -> nx.DiGraph:
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(self.succ)
        g.add_edges_from(self.edges)
        return g


@dataclass
class ExecGraph:
    adjacency: _Adjacency
    fleet_hosts: Mapping[str, Sequence[str]]
    step_index: Mapping[str, int]  # topological rank of each step
    batch_of: Mapping[tuple[str, str], int]  # (fleet, host) -> batch number
    _nx: Any = field(default=None, init=False, repr=False)

    @property
    def nodes(self) -> Iterable[Node]:
        return self.adjacency.succ.keys()

    def successors(self, node: Node) -> Iterable[Node]:
        return self.adjacency.succ[node].keys()

    def predecessors(self, node: Node) -> Iterable[Node]:
        return self.adjacency.pred[node].keys()

    def in_degree(self, node: Node) -> int:
        return len(self.adjacency.pred[node])

    @property
    def graph(self) -> nx.DiGraph:
        """The same DAG as a networkx `DiGraph` (networkx is imported on first use)."""
        if self._nx is None:
            self._nx = self.adjacency.to_networkx()
        return self._nx

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
        return [n for n in self.nodes if not n.barrier]


def _step_adjacency(playbook: Playbook) -> _Adjacency:
    """Step-level DAG (ids only), with a cycle check that names the cycle."""
    g = _Adjacency()
    ids = [s.id for s in playbook.steps]
    for s in playbook.steps:
        g.add_node(s.id)
    for s in playbook.steps:
        for dep in s.needs:
            if dep not in g.succ:
                raise GraphError(f"step '{s.id}' needs '{dep}', which is not a step or source", location=s.location)
            g.add_edge(dep, s.id)
    path = g.cycle()
    if not path:
        return g
    first = min(path[:-1], key=ids.index)
    raise GraphError(f"steps form a cycle: {' -> '.join(path)}", location=playbook.step(first).location)


def step_graph(playbook: Playbook) -> nx.DiGraph:
    """Step-level DAG (ids only) as a networkx `DiGraph`, each node with its `step`; a cycle is
    a `GraphError` that names it."""
    g = _step_adjacency(playbook).to_networkx()
    for s in playbook.steps:
        g.nodes[s.id]["step"] = s
    return g


def step_order(playbook: Playbook, g: _Adjacency | None = None) -> list[str]:
    """Topological order of steps, ties broken by their order in the file (the lexicographic
    topological order by file position). `g`: the step DAG when the caller has built it."""
    g = _step_adjacency(playbook) if g is None else g
    pos = {s.id: i for i, s in enumerate(playbook.steps)}
    sorter = graphlib.TopologicalSorter(g.pred)
    sorter.prepare()
    ready = [(pos[n], n) for n in sorter.get_ready()]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, n = heapq.heappop(ready)
        order.append(n)
        sorter.done(n)
        for m in sorter.get_ready():
            heapq.heappush(ready, (pos[m], m))
    return order


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
    sg = _step_adjacency(playbook)
    order = step_order(playbook, sg)
    index = {sid: i for i, sid in enumerate(order)}
    g = _Adjacency()
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
    found = g.cycle()
    if found:
        cycle = [str(a) for a in found[:-1]]
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
    sg = _step_adjacency(playbook)
    lines = ["flowchart TD"]
    for sid in step_order(playbook, sg):
        label = _label(playbook, sid).replace('"', "'")
        lines.append(f'    {_mermaid_id(sid)}["{label}"]')
    for a, b in sg.edges:
        lines.append(f"    {_mermaid_id(a)} --> {_mermaid_id(b)}")
    return "\n".join(lines) + "\n"


def to_dot(playbook: Playbook) -> str:
    """The step DAG in Graphviz dot."""
    sg = _step_adjacency(playbook)
    lines = [f'digraph "{playbook.name}" {{', "    rankdir=TB;", "    node [shape=box];"]
    for sid in step_order(playbook, sg):
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
