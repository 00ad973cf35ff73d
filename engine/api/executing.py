"""One plan or run (`execute`), with the connections opened early and the deploy locks it takes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from engine.api.ids import new_release_id, new_run_id
from engine.execute.locks import LockInfo, acquire_all, default_lock_path, release_all
from engine.execute.options import RunOptions, resolve_fleets
from engine.model.config import Loaded, Playbook
from engine.model.events import Event, EventBus
from engine.model.results import RunSummary

if TYPE_CHECKING:  # imported where used: `load` and `open_early` must not wait for the graph library
    from engine.connection.pool import ConnectionPool
    from engine.execute.scheduler import Executor

__all__ = ["open_early", "execute"]


def open_early(loaded: Loaded, limit: str | None, workers: int) -> ConnectionPool | None:
    """Start opening the SSH connections of every host the playbook's fleets select (after
    `--limit`), in the background, and return the pool to pass to `execute`.

    Called between `load` (the playbook and inventory are valid) and `check`: the handshakes
    overlap the checks and the imports they need, instead of following them. Opening a
    connection runs nothing on a host; a check that fails closes the pool, and a host that
    cannot be reached is reported by its first step as usual. None when no host uses SSH.
    """
    fleet_hosts = resolve_fleets(loaded.playbook, loaded.inventory, limit)
    names = list(dict.fromkeys(h for hosts in fleet_hosts.values() for h in hosts))
    hosts = [loaded.inventory.hosts[n] for n in names if loaded.inventory.hosts[n].connection == "ssh"]
    if not hosts:
        return None
    from engine.connection.pool import ConnectionPool

    pool = ConnectionPool()
    pool.prewarm(hosts, workers=max(1, workers))
    return pool


def execute(
    loaded: Loaded,
    options: RunOptions,
    *,
    subscribers: Sequence[Callable[[Event], None]] = (),
    connect: Callable[[str], Any] | None = None,
    on_executor: Callable[[Executor], None] | None = None,
    pool: ConnectionPool | None = None,
) -> RunSummary:
    """Plan or run (per `options.mode`). Opens SSH connections through one shared pool (`pool`,
    from `open_early`, or a new one; closed at the end) unless `connect` is given (tests pass
    a fake)."""
    from engine.execute.scheduler import Executor

    if not options.run_id:
        options.run_id = new_run_id()
    if not options.release_id:
        options.release_id = new_release_id()
    bus = EventBus(subscribers)
    release: Callable[[str], None] | None = None
    locked: set[str] = set()  # hosts whose lock is released at the end, over their connection
    warming = pool is not None
    if connect is None:
        if pool is None:
            from engine.connection.pool import ConnectionPool

            pool = ConnectionPool()
        inv = loaded.inventory

        def connect(name: str) -> Any:
            return pool.get(inv.hosts[name])

        def release_early(name: str) -> None:
            if name not in locked:
                pool.release(name)

        release = release_early
    taken: list[tuple[str, list[str], Any]] = []
    shared: list[Any] = []
    summary: RunSummary | None = None
    try:
        executor = Executor(
            loaded.playbook, loaded.inventory, options, bus=bus, connect=connect, release=release, prewarm=not warming
        )
        if on_executor:
            on_executor(executor)
        if options.mode == "run" and options.locks and options.state:
            from engine.execute.sharded import shared_locks

            shared = shared_locks(loaded.playbook, executor.fleet_hosts, options)  # instead of the hosts' locks
        elif options.mode == "run" and options.locks:
            taken = _acquire_locks(loaded.playbook, executor, connect, options)
            locked.update(h for _, hosts, _ in taken for h in hosts)
        summary = executor.execute()
        return summary
    finally:
        ended_ok = summary is not None and summary.exit_code() == 0
        for lock in shared:
            lock.release(ended_ok=ended_ok)  # a shard that ended ok leaves the run's lock to its coordinator
        _release_locks(taken, connect, options)
        if pool is not None:
            pool.close_all()


def _acquire_locks(
    playbook: Playbook, executor: Executor, connect: Callable[[str], Any], options: RunOptions
) -> list[tuple[str, list[str], Any]]:
    """Take every locked fleet's deploy lock on all its hosts before any step starts; a lock
    held by another run fails the whole run at once, naming the holder (nothing has run)."""
    taken: list[tuple[str, list[str], Any]] = []
    # the shards of one run share its locks (hosts may share one lock directory, as in tests)
    owner = options.run_id.rsplit(".", 1)[0] if options.shard is not None else options.run_id
    info = LockInfo.create(run_id=owner, playbook=playbook.path)
    try:
        for name, fleet in playbook.fleets.items():
            hosts = [
                h for h in executor.fleet_hosts.get(name, []) if executor.inventory.hosts[h].connection != "kubernetes"
            ]  # the API has its own concurrency control
            if not fleet.lock or not hosts:
                continue
            path = default_lock_path(name)
            got, _unreachable = acquire_all(
                {h: functools.partial(connect, h) for h in hosts},
                path,
                info,
                part=options.run_id,
                workers=options.forks,
            )
            taken.append((path, got, info))  # unreachable hosts fail at their first step
    except BaseException:
        _release_locks(taken, connect, options)
        raise
    return taken


def _release_locks(taken: list[tuple[str, list[str], Any]], connect: Callable[[str], Any], options: RunOptions) -> None:
    """Release the deploy locks `_acquire_locks` took, on the hosts where each was taken."""
    for path, hosts, info in taken:
        release_all(
            {h: functools.partial(connect, h) for h in hosts},
            path,
            info.run_id,
            part=options.run_id,
            workers=options.forks,
        )
