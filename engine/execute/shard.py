"""Sharded runs: which hosts a shard works on, and what runs once in the coordinator phase.

`playbook run|plan|apply --shard I/N` works on a deterministic 1/N of the hosts (docs/scale.md).
Every shard of one run shares its run id and release id; each records itself as the run
`<run id>.s<I>of<N>` in the history, so `--resume RUN_ID --shard I/N` finds exactly its part.

Which host goes where (`assign`): a balanced rendezvous hash. Each host ranks the shards by
sha256(shard, host) (highest random weight); hosts, taken in the order of sha256(host), go to
the best-ranked shard that still has room, where room is floor(n/N) each plus the n mod N
extra places handed out first come first served. So sizes always differ by at most one host
(the hard guarantee), the same names and N always give the same shards whatever the
inventory order, and a host added or removed mostly moves only itself: the hosts before it in
hash order keep their places, the ones after it move only when a shard they preferred filled
up or freed a place (measured in tests/engine/test_shard.py: 100 hosts in 4 shards, one host
added, at most a few others move). Plain rendezvous hashing moves nothing else but lets sizes
drift by several hosts; sorting by hash and cutting N ranges keeps sizes but moves up to a
range boundary per shard. The balanced variant takes the balance of the second and most of
the stability of the first.

What runs where (`coordinator_steps`): steps on the controller (except `sources.*`), steps of
once-per-run modules (`ONCE_MODULES`: `helm_bump` pushes to git, `canary_switch` switches a
cluster) and steps on fleets whose hosts are all Kubernetes targets run exactly once, in the
coordinator phase (`--shard coordinator`), after every shard finished. Sources are fetched by
each shard that needs them (a saved plan's digests are checked by each shard's drift check).
A host step cannot wait for a coordinator step: such a playbook is refused before any host is
touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from engine.errors import PlaybookError
from engine.model.config import CONTROLLER, Inventory, Loaded, Playbook

__all__ = [
    "ONCE_MODULES",
    "Shard",
    "ShardError",
    "parse_shard",
    "assign",
    "coordinator_steps",
    "shard_playbook",
    "coordinator_playbook",
    "part_run_id",
]

#: modules whose steps run once per run, in the coordinator phase, whatever fleet they name
ONCE_MODULES = frozenset({"helm_bump", "canary_switch"})


class ShardError(PlaybookError, ValueError):
    """`--shard` is malformed, its environment is incomplete, or the playbook cannot be split."""


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `total` (1-based), or the coordinator (index 0)."""

    index: int
    total: int

    @property
    def coordinator(self) -> bool:
        return self.index == 0

    @property
    def part(self) -> str:
        """The suffix of this part's run id: `s2of4`, or `coord`."""
        return "coord" if self.coordinator else f"s{self.index}of{self.total}"

    def __str__(self) -> str:
        return "coordinator" if self.coordinator else f"{self.index}/{self.total}"


COORDINATOR = Shard(0, 0)


def _int(value: str, what: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ShardError(f"{what} must be an integer (got {value!r})") from None


def parse_shard(text: str, env: Mapping[str, str] | None = None) -> Shard:
    """`I/N` (1-based), `coordinator`, or `auto`: GitLab's `CI_NODE_INDEX`/`CI_NODE_TOTAL`
    (1-based, `parallel: N`), else a Kubernetes Indexed Job's `JOB_COMPLETION_INDEX` (0-based)
    with `PLAYBOOK_SHARD_TOTAL` (the Job's `completions`)."""
    env = os.environ if env is None else env
    text = text.strip()
    if text in ("coordinator", "coord"):
        return COORDINATOR
    if text == "auto":
        if env.get("CI_NODE_INDEX") or env.get("CI_NODE_TOTAL"):
            if not (env.get("CI_NODE_INDEX") and env.get("CI_NODE_TOTAL")):
                raise ShardError("--shard auto: CI_NODE_INDEX and CI_NODE_TOTAL must both be set (GitLab `parallel:`)")
            index = _int(env["CI_NODE_INDEX"], "CI_NODE_INDEX")
            total = _int(env["CI_NODE_TOTAL"], "CI_NODE_TOTAL")
            where = "CI_NODE_INDEX/CI_NODE_TOTAL"
        elif env.get("JOB_COMPLETION_INDEX") is not None and env.get("JOB_COMPLETION_INDEX") != "":
            if not env.get("PLAYBOOK_SHARD_TOTAL"):
                raise ShardError(
                    "--shard auto: JOB_COMPLETION_INDEX is set but PLAYBOOK_SHARD_TOTAL is not "
                    "(set it to the Indexed Job's `completions`)"
                )
            index = _int(env["JOB_COMPLETION_INDEX"], "JOB_COMPLETION_INDEX") + 1
            total = _int(env["PLAYBOOK_SHARD_TOTAL"], "PLAYBOOK_SHARD_TOTAL")
            where = "JOB_COMPLETION_INDEX+1/PLAYBOOK_SHARD_TOTAL"
        else:
            raise ShardError(
                "--shard auto: no shard in the environment (expected CI_NODE_INDEX and CI_NODE_TOTAL "
                "from GitLab `parallel:`, or JOB_COMPLETION_INDEX and PLAYBOOK_SHARD_TOTAL in a Kubernetes Indexed Job)"
            )
        return _checked(index, total, where)
    index_s, sep, total_s = text.partition("/")
    if not sep:
        raise ShardError(f"--shard must be I/N (e.g. 2/4), 'auto' or 'coordinator' (got {text!r})")
    return _checked(_int(index_s, "--shard I"), _int(total_s, "--shard N"), "--shard")


def _checked(index: int, total: int, where: str) -> Shard:
    if total < 1 or not 1 <= index <= total:
        raise ShardError(f"{where}: the shard index must be between 1 and the total (got {index}/{total})")
    return Shard(index, total)


def _weight(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode()).digest()


def assign(hosts: Iterable[str], total: int) -> dict[str, int]:
    """Each host's shard (1..total): balanced rendezvous hashing (see the module docstring)."""
    names = sorted(set(hosts), key=lambda h: (_weight(h), h))
    floor, extra = divmod(len(names), total)
    size = [0] * (total + 1)
    out: dict[str, int] = {}
    for host in names:
        ranked = sorted(range(1, total + 1), key=lambda s: _weight(str(s), host), reverse=True)
        for s in ranked:
            if size[s] < floor:
                break
            if size[s] == floor and extra:
                extra -= 1
                break
        out[host] = s
        size[s] += 1
    return out


def _is_kube(inventory: Inventory, hosts: Iterable[str]) -> bool:
    hosts = list(hosts)
    return bool(hosts) and all(inventory.hosts[h].connection == "kubernetes" for h in hosts)


def coordinator_steps(playbook: Playbook, inventory: Inventory, fleet_hosts: Mapping[str, list[str]]) -> set[str]:
    """The ids of the steps that run once, in the coordinator phase."""
    out = set()
    for s in playbook.steps:
        if s.id.startswith("sources."):
            continue
        if s.fleet == CONTROLLER or s.module in ONCE_MODULES or _is_kube(inventory, fleet_hosts.get(s.fleet, [])):
            out.add(s.id)
    return out


def _only_steps(playbook: Playbook, keep: set[str], *, all_fleets: bool = False) -> Playbook:
    steps = tuple(
        dataclasses.replace(s, needs=tuple(n for n in s.needs if n in keep)) for s in playbook.steps if s.id in keep
    )
    used = {s.fleet for s in steps}
    fleets = {k: f for k, f in playbook.fleets.items() if all_fleets or k in used}
    return dataclasses.replace(playbook, steps=steps, fleets=fleets)


def shard_playbook(loaded: Loaded, shard: Shard, fleet_hosts: Mapping[str, list[str]]) -> tuple[Loaded, frozenset[str]]:
    """The playbook a shard runs (its sources and host steps) and the hosts it runs them on.
    Refused when a host step needs a coordinator step (it could never run in a shard)."""
    pb, inv = loaded.playbook, loaded.inventory
    once = coordinator_steps(pb, inv, fleet_hosts)
    for s in pb.steps:
        if s.id in once:
            continue
        waits = [n for n in s.needs if n in once]
        if waits:
            where = f"{s.location} " if s.location else ""
            raise ShardError(
                f"{where}step '{s.id}' needs '{waits[0]}', which runs once in the coordinator phase after "
                f"the shards (docs/scale.md): a sharded run cannot wait for it; run the playbook unsharded, "
                f"or make '{s.id}' not depend on it"
            )
    keep = {s.id for s in pb.steps if s.id not in once}
    restricted = _only_steps(pb, keep)
    hosts = {
        h for name in restricted.fleets for h in fleet_hosts.get(name, []) if inv.hosts[h].connection != "kubernetes"
    }
    mine = frozenset(h for h, i in assign(hosts, shard.total).items() if i == shard.index)
    return Loaded(restricted, inv), mine


def coordinator_playbook(loaded: Loaded, fleet_hosts: Mapping[str, list[str]]) -> tuple[Loaded, set[str]]:
    """The playbook the coordinator runs: the coordinator steps and the sources they need.
    Also returns the ids of the host steps left to the shards (their outputs are recorded)."""
    pb = loaded.playbook
    once = coordinator_steps(pb, loaded.inventory, fleet_hosts)
    by_id = {s.id: s for s in pb.steps}
    keep = set(once)
    todo = list(once)
    while todo:
        for need in by_id[todo.pop()].needs:
            if need.startswith("sources.") and need not in keep:
                keep.add(need)
                todo.append(need)
    sharded = {s.id for s in pb.steps if s.id not in once and not s.id.startswith("sources.")}
    # every fleet stays: the coordinator holds the run's deploy locks of all of them
    return Loaded(_only_steps(pb, keep, all_fleets=True), loaded.inventory), sharded


def part_run_id(run_id: str, shard: Shard) -> str:
    """The run id a part records itself under: `<run id>.s2of4`, `<run id>.coord`."""
    return f"{run_id}.{shard.part}"
