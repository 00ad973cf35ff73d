"""The programmatic API: load, check, plan, run. It never prints; results are values and events.

The CLI (`engine.cli`) is a thin shell over these functions.
"""

from __future__ import annotations

import datetime as _dt
import os
import uuid
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from engine.errors import LoadError
from engine.model.events import Event, EventBus
from engine.execute.locks import LockInfo, acquire_all, default_lock_path, release_all
from engine.model.config import Loaded, Playbook
from engine.execute.options import RunOptions, resolve_fleets
from engine.model.results import RunSummary

if TYPE_CHECKING:  # imported where used: `load` and `open_early` must not wait for the graph library
    from engine.connection.pool import ConnectionPool
    from engine.execute.scheduler import Executor

__all__ = [
    "Loaded",
    "load",
    "find_inventory",
    "parse_extra_vars",
    "check",
    "open_early",
    "execute",
    "new_run_id",
    "new_release_id",
    "file_hash",
    "resolve_secrets",
]


def find_inventory(playbook: Playbook, explicit: str | None) -> str:
    """`-i` wins; then the playbook's `inventory:` (relative to it); then $PLAYBOOK_INVENTORY."""
    if explicit:
        return explicit
    if playbook.inventory:
        return os.path.normpath(os.path.join(os.path.dirname(playbook.path), playbook.inventory))
    env = os.environ.get("PLAYBOOK_INVENTORY")
    if env:
        return env
    raise LoadError(
        "no inventory: pass -i INVENTORY, set `inventory:` in the playbook, or set $PLAYBOOK_INVENTORY",
        path=playbook.path,
    )


def load(playbook_path: str, inventory_path: str | None = None) -> Loaded:
    from engine.load.inventory import load_inventory
    from engine.load.playbook import load_playbook

    pb = load_playbook(playbook_path)
    inv = load_inventory(find_inventory(pb, inventory_path))
    return Loaded(pb, inv)


def parse_extra_vars(items: Sequence[str]) -> dict[str, Any]:
    """`-e key=value` (a string), `-e @vars.yml`, `-e '{"json": "object"}'`; later ones win."""
    from engine.yamlio.document import load_file

    result: dict[str, Any] = {}
    for item in items:
        if item.startswith("@"):
            doc = load_file(item[1:])
            if not isinstance(doc.data, dict):
                raise LoadError(f"extra vars file must hold a mapping (got {type(doc.data).__name__})", path=item[1:])
            result.update(doc.data)
        elif item.lstrip().startswith("{"):
            import json

            try:
                data = json.loads(item)
            except json.JSONDecodeError as exc:
                raise LoadError(f"-e JSON is not valid: {exc}") from None
            if not isinstance(data, dict):
                raise LoadError("-e JSON must be an object")
            result.update(data)
        elif "=" in item:
            key, _, value = item.partition("=")
            key = key.strip()
            if not key.isidentifier():
                raise LoadError(f"-e: '{key}' is not a valid variable name (expected key=value)")
            result[key] = value
        else:
            raise LoadError(f"-e expects key=value, @file.yml or a JSON object (got {item!r})")
    return result


def resolve_secrets(playbook: Playbook, cli: Sequence[str] = ()) -> dict[str, str]:
    """Secret vars: the playbook's `secrets:` (env or file) and `--secret NAME` (the value of env
    var NAME) / `--secret NAME=@FILE`. Every value is registered with the scrubber before it is
    used, so it is masked in every output; none ever travels in argv."""
    from engine.secrets import SCRUBBER

    found: dict[str, str] = {}

    def read_file(name: str, path: str) -> str:
        full = os.path.expanduser(path)
        if not os.path.isabs(full):
            full = os.path.join(os.path.dirname(os.path.abspath(playbook.path)), full)
        try:
            with open(full, encoding="utf-8") as fh:
                return fh.read().rstrip("\n")
        except OSError as exc:
            raise LoadError(f"secret '{name}': cannot read file {path}: {exc.strerror}") from None

    def read_env(name: str, var: str) -> str:
        if var not in os.environ:
            raise LoadError(f"secret '{name}': environment variable {var} is not set")
        return os.environ[var]

    for name, spec in playbook.secrets.items():
        found[name] = read_env(name, spec["env"]) if "env" in spec else read_file(name, spec["file"])
    for item in cli:
        name, sep, rest = item.partition("=")
        if not name.isidentifier():
            raise LoadError(f"--secret: '{name}' is not a valid variable name (expected NAME or NAME=@FILE)")
        if sep and not rest.startswith("@"):
            raise LoadError(f"--secret {name}: give the value in the environment variable {name} or as "
                            f"{name}=@FILE; a value on the command line would be visible to every user of the machine")
        found[name] = read_file(name, rest[1:]) if sep else read_env(name, name)
    for value in found.values():
        SCRUBBER.add(value)
    return found


def check(loaded: Loaded, extra_vars: Mapping[str, Any] | None = None, limit: str | None = None) -> None:
    """Everything that can be known wrong without touching a host (engine/execute/check.py);
    raises ValidationErrors listing every problem."""
    from engine.execute.check import check as check_loaded  # jinja2 and networkx: not for `load`

    check_loaded(loaded, extra_vars, limit)


def file_hash(path: str) -> str:
    """sha256 of a file's bytes (playbook and inventory hashes in the history)."""
    import hashlib

    with open(path, "rb") as fh:
        return "sha256:" + hashlib.sha256(fh.read()).hexdigest()


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def new_release_id() -> str:
    """A sortable release id, UTC to the second (Capistrano style): 20261124T051500Z."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def open_early(loaded: Loaded, limit: str | None, workers: int) -> "ConnectionPool | None":
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
    on_executor: "Callable[[Executor], None] | None" = None,
    pool: "ConnectionPool | None" = None,
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
    release = None
    warming = pool is not None
    if connect is None:
        if pool is None:
            from engine.connection.pool import ConnectionPool

            pool = ConnectionPool()
        inv = loaded.inventory

        def connect(name: str) -> Any:
            return pool.get(inv.hosts[name])

        release = getattr(pool, "release", None)
    taken: list[tuple[str, list[str], Any]] = []
    try:
        executor = Executor(loaded.playbook, loaded.inventory, options, bus=bus, connect=connect, release=release,
                            prewarm=not warming)
        if on_executor:
            on_executor(executor)
        if options.mode == "run" and options.locks:
            taken = _acquire_locks(loaded.playbook, executor, connect, options)
        return executor.execute()
    finally:
        for path, hosts, info in taken:
            release_all({h: (lambda h=h: connect(h)) for h in hosts}, path, info.run_id, workers=options.forks)
        if pool is not None:
            pool.close_all()


def _acquire_locks(playbook: Playbook, executor: "Executor", connect: Callable[[str], Any],
                   options: RunOptions) -> list[tuple[str, list[str], Any]]:
    """Take every locked fleet's deploy lock on all its hosts before any step starts; a lock
    held by another run fails the whole run at once, naming the holder (nothing has run)."""
    taken: list[tuple[str, list[str], Any]] = []
    info = LockInfo.create(run_id=options.run_id, playbook=playbook.path)
    try:
        for name, fleet in playbook.fleets.items():
            hosts = [h for h in executor.fleet_hosts.get(name, [])
                     if executor.inventory.hosts[h].connection != "kubernetes"]  # the API has its own concurrency control
            if not fleet.lock or not hosts:
                continue
            path = default_lock_path(name)
            got, _unreachable = acquire_all({h: (lambda h=h: connect(h)) for h in hosts}, path, info,
                                            workers=options.forks)
            taken.append((path, got, info))  # unreachable hosts fail at their first step
    except BaseException:
        for path, hosts, held in taken:
            release_all({h: (lambda h=h: connect(h)) for h in hosts}, path, held.run_id, workers=options.forks)
        raise
    return taken
