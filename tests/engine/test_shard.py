"""Shards: which hosts a shard gets, and which steps run once (engine/execute/shard.py)."""

from __future__ import annotations

import pytest

from engine.execute.shard import (
    Shard,
    ShardError,
    assign,
    coordinator_steps,
    parse_shard,
    shard_playbook,
)
from engine.model.config import CONTROLLER, Fleet, Host, Inventory, Loaded, Playbook, Step


def test_parse_shard_forms():
    assert parse_shard("2/4") == Shard(2, 4)
    assert parse_shard("coordinator").coordinator
    assert parse_shard("auto", {"CI_NODE_INDEX": "3", "CI_NODE_TOTAL": "5"}) == Shard(3, 5)
    assert parse_shard("auto", {"JOB_COMPLETION_INDEX": "0", "PLAYBOOK_SHARD_TOTAL": "2"}) == Shard(1, 2)


@pytest.mark.parametrize(
    "text, env, said",
    [
        ("5/4", {}, "between 1 and the total (got 5/4)"),
        ("0/4", {}, "between 1 and the total"),
        ("x/4", {}, "--shard I must be an integer (got 'x')"),
        ("2", {}, "must be I/N"),
        ("auto", {}, "no shard in the environment"),
        ("auto", {"CI_NODE_INDEX": "1"}, "CI_NODE_INDEX and CI_NODE_TOTAL must both be set"),
        ("auto", {"JOB_COMPLETION_INDEX": "1"}, "PLAYBOOK_SHARD_TOTAL is not"),
        ("auto", {"JOB_COMPLETION_INDEX": "4", "PLAYBOOK_SHARD_TOTAL": "4"}, "got 5/4"),
    ],
)
def test_parse_shard_refuses(text, env, said):
    with pytest.raises(ShardError) as exc:
        parse_shard(text, env)
    assert said in str(exc.value)


def test_assign_is_deterministic_disjoint_and_balanced():
    for n in (0, 1, 3, 7, 25, 100, 101):
        hosts = [f"web{i:03d}" for i in range(n)]
        for total in (1, 2, 3, 4, 7):
            got = assign(hosts, total)
            assert set(got) == set(hosts)
            assert got == assign(list(reversed(hosts)), total)  # inventory order does not matter
            sizes = [sum(1 for s in got.values() if s == i) for i in range(1, total + 1)]
            assert max(sizes) - min(sizes) <= 1, (n, total, sizes)


def test_adding_a_host_moves_few_others():
    hosts = [f"web{i:03d}" for i in range(100)]
    before = assign(hosts, 4)
    moved = []
    for extra in range(20):
        after = assign([*hosts, f"new{extra}"], 4)
        moved.append(sum(1 for h in hosts if before[h] != after[h]))
    # sorted(ranges) would move ~up to a quarter of the fleet; measured here: see docs/scale.md
    assert max(moved) <= 4, moved
    assert sum(moved) / len(moved) <= 2, moved


def _loaded(steps, hosts=("a", "b", "c", "d"), kube=("k1",)):
    inv_hosts = {h: Host(h) for h in hosts}
    inv_hosts.update({h: Host(h, connection="kubernetes") for h in kube})
    inv = Inventory("inv.yml", inv_hosts, {})
    fleets = {"web": Fleet("web", ",".join(hosts)), "k8s": Fleet("k8s", ",".join(kube))}
    return Loaded(Playbook("pb.yml", "pb", {}, fleets, tuple(steps)), inv)


def test_coordinator_steps_are_the_once_per_run_ones():
    loaded = _loaded(
        [
            Step("sources.code", "local_tree", CONTROLLER),
            Step("sync", "rsync", "web", needs=("sources.code",)),
            Step("bump", "helm_bump", CONTROLLER, needs=("sync",)),
            Step("switch", "canary_switch", "k8s"),
            Step("announce", "command", CONTROLLER),
        ]
    )
    fh = {"web": ["a", "b", "c", "d"], "k8s": ["k1"]}
    assert coordinator_steps(loaded.playbook, loaded.inventory, fh) == {"bump", "switch", "announce"}
    restricted, mine = shard_playbook(loaded, Shard(1, 2), fh)
    assert [s.id for s in restricted.playbook.steps] == ["sources.code", "sync"]
    _, other = shard_playbook(loaded, Shard(2, 2), fh)
    assert mine | other == {"a", "b", "c", "d"} and not mine & other


def test_a_host_step_waiting_for_a_coordinator_step_is_refused():
    loaded = _loaded([Step("migrate", "command", CONTROLLER), Step("sync", "rsync", "web", needs=("migrate",))])
    with pytest.raises(ShardError) as exc:
        shard_playbook(loaded, Shard(1, 2), {"web": ["a", "b", "c", "d"], "k8s": ["k1"]})
    assert "step 'sync' needs 'migrate', which runs once in the coordinator phase" in str(exc.value)
