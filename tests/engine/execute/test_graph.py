"""The execution graph: per-host chains, controller fan-in/out, batches, cycles, rendering."""

from __future__ import annotations

import subprocess
import sys

import networkx as nx
import pytest

from engine.errors import GraphError
from engine.execute.graph import Node, batches, build_graph, step_graph, step_order, to_dot, to_mermaid
from engine.model.config import CONTROLLER, Fleet, Playbook, Step


def pb(steps, fleets=None) -> Playbook:
    fleets = fleets or {"web": Fleet("web", "web"), "db": Fleet("db", "db")}
    return Playbook("pb.yml", "pb", {}, fleets, tuple(steps))


def test_same_fleet_needs_link_per_host_without_barrier():
    p = pb([Step("a", "command", "web"), Step("b", "command", "web", needs=("a",))])
    g = build_graph(p, {"web": ["h1", "h2"], "db": []}).graph
    assert set(g.edges) == {(Node("a", "h1"), Node("b", "h1")), (Node("a", "h2"), Node("b", "h2"))}


def test_controller_fans_out_and_in():
    p = pb(
        [
            Step("fetch", "command", CONTROLLER),
            Step("sync", "command", "web", needs=("fetch",)),
            Step("notify", "command", CONTROLLER, needs=("sync",)),
        ]
    )
    g = build_graph(p, {"web": ["h1", "h2"], "db": []}).graph
    assert set(g.successors(Node("fetch"))) == {Node("sync", "h1"), Node("sync", "h2")}
    assert set(g.predecessors(Node("notify"))) == {Node("sync", "h1"), Node("sync", "h2")}


def test_cross_fleet_needs_go_through_one_barrier():
    p = pb([Step("migrate", "command", "db"), Step("sync", "command", "web", needs=("migrate",))])
    g = build_graph(p, {"web": ["w1", "w2", "w3"], "db": ["d1", "d2"]}).graph
    barriers = [n for n in g.nodes if n.barrier]
    assert len(barriers) == 1
    assert g.number_of_edges() == 5
    assert all(nx.has_path(g, Node("migrate", d), Node("sync", w)) for d in ("d1", "d2") for w in ("w1", "w2", "w3"))


def test_serial_batches_chain():
    p = pb([Step("a", "command", "web")], {"web": Fleet("web", "web", serial=2)})
    g = build_graph(p, {"web": ["h1", "h2", "h3", "h4", "h5"]}).graph
    assert nx.has_path(g, Node("a", "h1"), Node("a", "h3"))
    assert nx.has_path(g, Node("a", "h4"), Node("a", "h5"))
    assert not nx.has_path(g, Node("a", "h1"), Node("a", "h2"))


@pytest.mark.parametrize(
    "serial,sizes", [(None, [5]), (2, [2, 2, 1]), ("40%", [2, 2, 1]), ("10%", [1] * 5), ("100%", [5])]
)
def test_batches(serial, sizes):
    assert [len(b) for b in batches(["a", "b", "c", "d", "e"], serial)] == sizes


def test_cycle_names_the_path():
    p = pb(
        [
            Step("a", "command", "web", needs=("c",)),
            Step("b", "command", "web", needs=("a",)),
            Step("c", "command", "web", needs=("b",)),
        ]
    )
    with pytest.raises(GraphError) as err:
        step_order(p)
    msg = str(err.value)
    assert "cycle" in msg and "a" in msg and "b" in msg and "c" in msg and "->" in msg


def test_serial_against_a_fleet_wide_controller_step_is_refused():
    p = pb(
        [
            Step("deploy", "command", "web"),
            Step("notify", "command", CONTROLLER, needs=("deploy",)),
            Step("cleanup", "command", "web", needs=("notify",)),
        ],
        {"web": Fleet("web", "web", serial=1)},
    )
    with pytest.raises(GraphError, match="cannot be ordered"):
        build_graph(p, {"web": ["h1", "h2"]})


def test_mermaid_and_dot():
    p = pb([Step("fetch", "command", CONTROLLER), Step("sync", "command", "web", needs=("fetch",))])
    m = to_mermaid(p)
    assert m.startswith("flowchart TD") and "s_fetch --> s_sync" in m
    d = to_dot(p)
    assert '"fetch" -> "sync";' in d


def test_step_order_is_the_lexicographic_topological_order_by_file_position():
    # c and a are ready first; file order puts c (index 0) first, then its dependent d becomes
    # ready and goes before a (index 2) only if d comes earlier in the file: it does not
    p = pb(
        [
            Step("c", "command", "web"),
            Step("b", "command", "web", needs=("a",)),
            Step("a", "command", "web"),
            Step("d", "command", "web", needs=("c",)),
        ]
    )
    assert step_order(p) == ["c", "a", "b", "d"]
    assert step_order(p) == list(nx.lexicographical_topological_sort(step_graph(p), key=[s.id for s in p.steps].index))


def test_the_networkx_view_is_the_same_dag():
    p = pb(
        [Step("migrate", "command", "db"), Step("sync", "command", "web", needs=("migrate",))],
        {"web": Fleet("web", "web", serial=1), "db": Fleet("db", "db")},
    )
    eg = build_graph(p, {"web": ["w1", "w2"], "db": ["d1"]})
    g = eg.graph
    assert list(g.nodes) == list(eg.nodes)
    assert all(set(g.successors(n)) == set(eg.successors(n)) for n in g.nodes)
    assert all(g.in_degree(n) == eg.in_degree(n) for n in g.nodes)
    assert nx.is_directed_acyclic_graph(g)


def test_a_run_path_graph_does_not_import_networkx():
    code = (
        "import sys\n"
        "from engine.execute.graph import build_graph\n"
        "from engine.model.config import Fleet, Playbook, Step\n"
        "p = Playbook('pb.yml', 'pb', {}, {'web': Fleet('web', 'web', serial=1)},"
        " (Step('a', 'command', 'web'), Step('b', 'command', 'web', needs=('a',))))\n"
        "g = build_graph(p, {'web': ['h1', 'h2', 'h3']})\n"
        "assert sum(1 for _ in g.nodes) == 8, list(g.nodes)\n"
        "print('networkx' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
