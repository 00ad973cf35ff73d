"""The programmatic API: load, check, plan, run. It never prints; results are values and events.

`execute` is one plan or run. What the `playbook` command does around it is here too, so any
Python caller gets it: `run` records a run in the history and the artifact records,
`prepare_resume` continues an interrupted run, `save_plan` / `prepare_apply` write a plan and
apply exactly it, `prepare_rollback` goes back to a recorded release, `drift` compares the hosts with what was
deployed there. The CLI (`engine.cli`)
parses, calls these, and prints.

Longer than ~400 lines: resume, saved plans, rollback, drift and shards each added their
entry point here; an `engine/api/` package with one file each is the next step.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.execute.locks import LockInfo, acquire_all, default_lock_path, release_all
from engine.execute.options import RunOptions, resolve_fleets
from engine.load.inputs import find_inventory, parse_extra_vars, resolve_secrets
from engine.model.config import Loaded, Playbook
from engine.model.events import Event, EventBus
from engine.model.results import RunSummary
from engine.record.savedplan import file_hash

if TYPE_CHECKING:  # imported where used: `load` and `open_early` must not wait for the graph library
    from engine.connection.pool import ConnectionPool
    from engine.execute.scheduler import Executor
    from engine.execute.shard import Shard
    from engine.record.drift import DriftReport
    from engine.record.live import RollbackReport
    from engine.record.plansign import PlanKey
    from engine.record.rollback import RollbackPlan

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
    "run",
    "prepare_resume",
    "prepare_part",
    "plan_key",
    "CONFIGURED_KEY",
    "save_plan",
    "SavedApply",
    "prepare_apply",
    "Rollback",
    "prepare_rollback",
    "rollback_report",
    "drift",
]


def load(playbook_path: str, inventory_path: str | None = None) -> Loaded:
    from engine.load.inventory import load_inventory
    from engine.load.playbook import load_playbook

    pb = load_playbook(playbook_path)
    inv = load_inventory(find_inventory(pb, inventory_path))
    return Loaded(pb, inv)


def check(loaded: Loaded, extra_vars: Mapping[str, Any] | None = None, limit: str | None = None, **kw: Any) -> None:
    """Everything that can be known wrong without touching a host (engine/execute/check.py);
    raises ValidationErrors listing every problem."""
    from engine.execute.check import check as check_loaded  # jinja2 and networkx: not for `load`

    check_loaded(loaded, extra_vars, limit, **kw)


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def _unused_release_id(history: Any) -> str:
    """A new release id no recorded run used: two runs within one second would otherwise share
    `releases/<id>` (the second writing into the live release); the later gets `-2`, `-3`, ...
    (which still sort after the first)."""
    base = new_release_id()
    used = history.release_ids(base)
    if base not in used:
        return base
    n = 2
    while f"{base}-{n}" in used:
        n += 1
    return f"{base}-{n}"


def new_release_id() -> str:
    """A sortable release id, UTC to the second (Capistrano style): 20261124T051500Z."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")


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
        for path, hosts, info in taken:
            release_all(
                {h: functools.partial(connect, h) for h in hosts},
                path,
                info.run_id,
                part=options.run_id,
                workers=options.forks,
            )
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
        for path, hosts, held in taken:
            release_all(
                {h: functools.partial(connect, h) for h in hosts},
                path,
                held.run_id,
                part=options.run_id,
                workers=options.forks,
            )
        raise
    return taken


# -- what the `playbook` command does around `execute`: records, resume, saved plans, rollback --


def run(
    loaded: Loaded,
    options: RunOptions,
    *,
    subscribers: Sequence[Callable[[Event], None]] = (),
    on_executor: Callable[[Executor], None] | None = None,
    pool: ConnectionPool | None = None,
    connect: Callable[[str], Any] | None = None,
    plan_hash: str = "",
    rollback: bool = False,
    warn: Callable[[str], None] | None = None,
) -> RunSummary:
    """`execute`, recorded as `playbook run` records it: in run mode the run goes into the history
    (`<state_dir>/history.sqlite`, scrubbed of secrets) as it happens, and each source's deployed
    digest into the artifact records once the run succeeded. A plan records nothing.

    In run mode a new run id is assigned, and a release id unless `options` has one (a resume,
    a saved plan, a rollback). `plan_hash` is the saved plan being applied, if any. A run also
    tells the playbook's and the inventory's `notify:` webhooks (engine/report/notify.py;
    `rollback` says it is a rollback); what they fail to receive is passed to `warn`."""
    subs = list(subscribers)
    history = None
    notifier = None
    if options.mode == "run":
        from engine.record.deployed import ArtifactRecorder
        from engine.record.history import HistoryRecorder
        from engine.record.state import open_history
        from engine.secrets import SCRUBBER

        history = open_history(options.state, options.state_dir)
        if options.shard is None:  # a part of a sharded run keeps the run's id (engine/execute/sharded.py)
            options.run_id = new_run_id()
        options.release_id = options.release_id or _unused_release_id(history)
        subs.insert(
            0,
            HistoryRecorder(
                history,
                name=loaded.playbook.name,
                release_id=options.release_id,
                limit=options.limit,
                playbook_hash=file_hash(loaded.playbook.path),
                inventory_hash=file_hash(loaded.inventory.path),
                plan_hash=plan_hash,
                scrub=SCRUBBER.scrub_obj,
            ),
        )
        subs.append(ArtifactRecorder(options.state_dir, loaded.playbook.name))
        notifier = _notifier(loaded, options, rollback=rollback, warn=warn)
        if notifier is not None:
            subs.append(notifier)
    try:
        return execute(loaded, options, subscribers=subs, on_executor=on_executor, pool=pool, connect=connect)
    finally:
        if history is not None:
            history.close()
        if notifier is not None:
            notifier.close()


def _notifier(loaded: Loaded, options: RunOptions, *, rollback: bool, warn: Callable[[str], None] | None) -> Any:
    """The run's webhook notifier, or None when neither the playbook nor the inventory has
    `notify:`. URL templates render over the controller's vars (playbook vars, -e, secrets)."""
    specs = [("playbook", i, n) for i, n in enumerate(loaded.playbook.notify)]
    specs += [("inventory", i, n) for i, n in enumerate(loaded.inventory.notify)]
    if not specs:
        return None
    from engine import templating
    from engine.errors import LoadError
    from engine.execute.context import HostContexts
    from engine.report.notify import Notifier, Target

    ctx = HostContexts(loaded.playbook, loaded.inventory, options, started=0.0).host(None)
    targets = []
    for where, i, spec in specs:
        label = f"{where} notify[{i}]"
        url = str(templating.render(str(spec["url"]), ctx, what=f"{label}.url"))
        if not url.startswith(("http://", "https://")):
            raise LoadError(
                f"{label}: 'url' must be an http:// or https:// URL (got a value starting "
                f"{url.split(':', 1)[0][:10]!r})"
            )
        targets.append(Target.from_config(spec, url, label))
    return Notifier(
        targets,
        loaded.playbook.name,
        release_id=options.release_id,
        rollback=rollback,
        warn=warn or (lambda _text: None),
    )


def prepare_resume(loaded: Loaded, options: RunOptions, run_id: str) -> bool:
    """Make `options` resume run `run_id` (`playbook run --resume`): the same release id, and the
    (step, host) nodes it finished, with their outputs, marked done so only the rest runs.

    Returns False, with only `options.resumed_from` and `options.release_id` set, when that run
    already finished: there is nothing to resume. Refused (`ResumeRefused`) when the run is
    unknown, or the playbook, inventory or `--limit` differ from it, or any source it recorded
    now gives another digest (a changed tree, a re-uploaded object, a republished package):
    resuming would put two trees under one release. The sources are planned again, read-only,
    on the controller to know; no host is contacted."""
    from engine.errors import ResumeRefused
    from engine.record.state import open_history

    hist = open_history(options.state, options.state_dir)
    try:
        rec = hist.run(run_id)
        if rec is None or rec.mode != "run":
            raise ResumeRefused(f"--resume: no run '{run_id}' in the history ({options.state_dir})")
        if rec.status == "ok":
            options.resumed_from, options.release_id = rec.run_id, rec.release_id or options.release_id
            return False
        if rec.playbook_hash != file_hash(loaded.playbook.path):
            raise ResumeRefused(f"--resume: the playbook changed since run {rec.run_id}; run it again instead")
        if rec.inventory_hash != file_hash(loaded.inventory.path):
            raise ResumeRefused(f"--resume: the inventory changed since run {rec.run_id}; run it again instead")
        if (rec.limit_pattern or None) != (options.limit or None):
            raise ResumeRefused(f"--resume: run {rec.run_id} used --limit {rec.limit_pattern!r}; resume with the same")
        finished = [r for r in hist.results(rec.run_id) if r["status"] in ("ok", "changed")]
    finally:
        hist.close()
    options.release_id = rec.release_id or options.release_id
    done = {(r["step"], r["host"]): r["outputs"] for r in finished}
    recorded = {
        step[len("sources.") :]: outs
        for (step, host), outs in done.items()
        if host is None and step.startswith("sources.")
    }
    fresh = _plan_sources(loaded, options, set(recorded))
    for name, then in sorted(recorded.items()):
        now = fresh[name]
        if now.status.value not in ("ok", "changed"):
            raise ResumeRefused(f"--resume: source '{name}' cannot be checked against run {rec.run_id}: {now.message}")
        before, after = then.get("digest"), now.outputs.get("digest")
        if before != after:
            raise ResumeRefused(
                f"--resume: source '{name}' changed since run {rec.run_id}: it was {before}, it is now {after}. "
                f"Resuming would deploy two different trees as release {options.release_id}: run it again "
                f"instead (a new release), or restore the source to {before} and resume"
            )
        done[(f"sources.{name}", None)] = dict(now.outputs)  # verified just now, and re-materialised
    options.resumed_from = rec.run_id
    options.done = done
    return True


def prepare_part(loaded: Loaded, options: RunOptions, shard: Shard, run_id: str, *, resume: bool = False) -> Loaded:
    """Make `options` one part of a sharded run (`--shard`, engine/execute/sharded.py) and
    return the playbook that part runs: shard I/N's hosts and steps, or the coordinator's
    steps that run once, after every shard of run `run_id` finished."""
    from engine.execute.sharded import prepare_coordinator, prepare_shard

    if shard.coordinator:
        return prepare_coordinator(loaded, options, run_id)
    part = prepare_shard(loaded, options, shard, run_id, resume=resume)
    if options.mode == "run" and not resume:
        _pin_sources(part, options, run_id)
    return part


def _pin_sources(loaded: Loaded, options: RunOptions, run_id: str) -> None:
    """Every shard of a `run` deploys the sources the first shard saw (engine/record/state/pins.py):
    fetched here, read-only, compared with the pinned digests, then given to the run as done."""
    from engine.execute.shard import ShardError
    from engine.record.state.pins import pin_sources

    names = {s.id[len("sources.") :] for s in loaded.playbook.steps if s.id.startswith("sources.")}
    fresh = _plan_sources(loaded, options, names)
    ready = {n: r for n, r in fresh.items() if r.status.value in ("ok", "changed")}  # a failure fails the run
    pinned = pin_sources(
        options.state, options.state_dir, run_id, {n: r.outputs.get("digest") for n, r in ready.items()}
    )
    for name, result in sorted(ready.items()):
        if name in pinned and pinned[name] != result.outputs.get("digest"):
            raise ShardError(
                f"source '{name}' is {result.outputs.get('digest')} for shard {options.shard}, but the first shard "
                f"of run {run_id} deployed {pinned[name]}: it changed while the shards started. Restore it and "
                f"run this shard again, or start a new run (a new run id and release) for every shard"
            )
    options.done = {**(options.done or {}), **{(f"sources.{n}", None): dict(r.outputs) for n, r in ready.items()}}


def _plan_sources(loaded: Loaded, options: RunOptions, names: set[str]) -> dict[str, Any]:
    """A read-only plan of the named sources alone, on the controller: their results by name."""
    from engine.errors import ConnectionFailed

    wanted = {f"sources.{n}" for n in names}
    steps = tuple(
        dataclasses.replace(s, needs=tuple(d for d in s.needs if d in wanted))
        for s in loaded.playbook.steps
        if s.id in wanted
    )
    only = Loaded(dataclasses.replace(loaded.playbook, steps=steps, fleets={}), loaded.inventory)

    def no_host(name: str) -> Any:  # sources run on the controller; a host is never contacted here
        raise ConnectionFailed("not contacted while checking sources", host=name)

    opts = RunOptions(
        mode="plan",
        forks=options.forks,
        extra_vars=options.extra_vars,
        release_id=options.release_id,
        state_dir=options.state_dir,
        verbose=options.verbose,
    )
    summary = execute(only, opts, connect=no_host)
    return {r.step[len("sources.") :]: r for r in summary.results}


class _Configured:
    """The type of `CONFIGURED_KEY`."""


#: `save_plan`'s default: sign with the key the environment configures, if any.
CONFIGURED_KEY = _Configured()


def plan_key() -> PlanKey | None:
    """The plan-signing key from `PLAYBOOK_PLAN_KEY` or `PLAYBOOK_PLAN_KEY_FILE`, or None
    (engine/record/plansign.py)."""
    from engine.record.plansign import plan_key as from_env

    return from_env()


def save_plan(
    path: str,
    summary: RunSummary,
    loaded: Loaded,
    options: RunOptions,
    *,
    secret_names: set[str],
    key: PlanKey | None | _Configured = CONFIGURED_KEY,
) -> str:
    """Write a plan's summary to `path` for `playbook apply` (engine/record/savedplan.py) and
    return its plan hash. Secret values never enter the file. Signed with `key`: by default the
    configured one (`plan_key()`, unsigned when there is none); None: unsigned."""
    from engine.record.savedplan import save_plan as write_plan
    from engine.secrets import SCRUBBER

    signing = plan_key() if isinstance(key, _Configured) else key
    return write_plan(
        path,
        summary,
        playbook=loaded.playbook.path,
        inventory=loaded.inventory.path,
        extra_vars=options.extra_vars,
        secret_names=secret_names,
        limit=options.limit,
        release_id=options.release_id,
        scrubber=SCRUBBER,
        key=signing,
    )


@dataclass(frozen=True)
class SavedApply:
    """A saved plan checked against the world, ready to `run`: its playbook and inventory, and
    run options that apply exactly the saved nodes (`expected`) with the saved release id."""

    loaded: Loaded
    options: RunOptions
    plan_hash: str
    secret_names: frozenset[str]


def prepare_apply(
    plan_file: str,
    *,
    secrets: Sequence[str] = (),
    forks: int = 50,
    state_dir: str = ".playbook",
    verbose: int = 0,
    shard: Shard | None = None,
    state: str = "",
) -> SavedApply:
    """Load a saved plan and check it still holds (`playbook apply`). Refused, with nothing
    changed anywhere, when the file does not verify (`UntrustedPlan`: altered, unsigned while a
    key is configured, signed with another key; engine/record/savedplan.py), and (`StalePlan`)
    when its playbook or inventory changed, the secret vars differ from the plan's, or a fresh
    read-only plan from the same inputs differs from it on any node (change, diffs or
    fingerprint), naming each host and step. With `shard`, only that part of the plan is checked
    and applied (engine/execute/sharded.py), as part of the run named by the plan's run id."""
    from engine.errors import StalePlan
    from engine.record.savedplan import check_files, drift, load_plan

    saved = load_plan(plan_file, key=plan_key())
    check_files(saved)
    loaded = load(saved.playbook, saved.inventory)
    extra = dict(saved.extra_vars)
    found = resolve_secrets(loaded.playbook, secrets)
    if set(found) != set(saved.secret_vars):
        missing, extra_names = sorted(set(saved.secret_vars) - set(found)), sorted(set(found) - set(saved.secret_vars))
        why = (
            f"it was made with secret var(s) {', '.join(missing)}: pass them again (--secret NAME)"
            if missing
            else f"secret var(s) {', '.join(extra_names)} were not part of it"
        )
        raise StalePlan(f"refusing to apply {plan_file}: {why}", [])
    extra.update(found)
    check(loaded, extra, saved.limit)
    state = state or loaded.playbook.state or loaded.inventory.state
    state = "" if state == "local" else state
    scope = RunOptions(mode="run", limit=saved.limit, release_id=saved.release_id, state_dir=state_dir, state=state)
    if shard is not None:
        from engine.execute.sharded import prepare_coordinator, prepare_shard, shard_nodes

        if shard.coordinator:
            loaded = prepare_coordinator(loaded, scope, saved.run_id)
        else:
            loaded = prepare_shard(loaded, scope, shard, saved.run_id)
        saved = dataclasses.replace(saved, nodes=shard_nodes(saved.nodes, loaded, scope))
    verify = RunOptions(
        mode="plan",
        forks=forks,
        limit=saved.limit,
        extra_vars=extra,
        release_id=saved.release_id,
        state_dir=state_dir,
        verbose=verbose,
        shard=scope.shard,
        only_hosts=scope.only_hosts,
        recorded=scope.recorded,
        state=state,
    )
    fresh = execute(loaded, verify)
    drifted = drift(saved, fresh)
    if drifted:
        lines = "\n".join(f"  {host}  {step}: {why}" for host, step, why in drifted)
        hosts = sorted({h for h, _, _ in drifted})
        raise StalePlan(
            f"refusing to apply {plan_file}: the world changed since the plan on "
            f"{len(hosts)} host(s) ({', '.join(hosts)}):\n{lines}\nplan again and review the new plan",
            drifted,
        )
    options = RunOptions(
        mode="run",
        forks=forks,
        limit=saved.limit,
        extra_vars=extra,
        release_id=saved.release_id,
        state_dir=state_dir,
        verbose=verbose,
        expected=saved.nodes,
        run_id=scope.run_id if shard is not None else "",
        shard=scope.shard,
        only_hosts=scope.only_hosts,
        recorded=scope.recorded,
        state=state,
        budget=scope.budget,
    )
    return SavedApply(loaded, options, saved.plan_hash, frozenset(found))


@dataclass(frozen=True)
class Rollback:
    """A rollback ready to `run`: the generated playbook (`loaded`), its options (the target
    release id, the outputs the target recorded), the plan it came from (`plan.current`,
    `plan.target`, what is undone) and, in run mode, the whole-fleet `preview` that found every
    host can be rolled back."""

    plan: RollbackPlan
    loaded: Loaded
    options: RunOptions
    preview: RunSummary | None = None


def prepare_rollback(
    loaded: Loaded,
    options: RunOptions,
    *,
    to: str | None = None,
    with_migrations: bool = False,
    connect: Callable[[str], Any] | None = None,
) -> Rollback:
    """Plan a rollback of `loaded`'s playbook (engine/record/rollback.py) and check the generated
    playbook; `options` gives mode, forks, limit and extra vars (secrets included).

    It first reads, read-only, where each host's `current` points and which releases it has
    (engine/record/live.py): the rollback leaves what is live, not what the history says
    finished. In run mode it then plans the whole rollback on every host and refuses when any
    node fails there, naming each host and step: a rollback that cannot finish everywhere is
    not started anywhere. The run plans each step again just before it applies it, and stops at
    the first host that fails. Refused (`RollbackRefused`) also when a host cannot be read,
    when no release older than the live one is on every host, or when migrations would be left
    applied without `with_migrations`; nothing is changed anywhere then. `connect` replaces the
    SSH pool (tests)."""
    from engine.connection.pool import ConnectionPool
    from engine.errors import RollbackRefused
    from engine.model.config import CONTROLLER
    from engine.record.live import live_from, live_state_playbook
    from engine.record.rollback import plan_rollback, releases_steps, without_budget
    from engine.record.state import open_history

    inv = loaded.inventory
    pool = ConnectionPool()  # opened only if used; one connection per host for every read

    def reach(name: str) -> Any:
        return connect(name) if connect is not None else pool.get(inv.hosts[name])

    planning = dataclasses.replace(options, mode="plan", run_id="", release_id="", expected=None, done=None)
    try:
        live = None
        reader = live_state_playbook(loaded.playbook, releases_steps=releases_steps(loaded.playbook))
        if reader is not None:
            check(Loaded(reader, inv), options.extra_vars, options.limit)
            live = live_from(execute(Loaded(reader, inv), planning, connect=reach))
        hist = open_history(options.state, options.state_dir)
        try:
            plan = plan_rollback(loaded.playbook, hist, to=to, with_migrations=with_migrations, live=live)
        finally:
            hist.close()
        assert plan.playbook is not None
        every_host = Loaded(without_budget(plan.playbook), inv)
        check(every_host, options.extra_vars, options.limit, recorded=plan.recorded)
        ready = dataclasses.replace(options, release_id=plan.target, recorded=plan.recorded)
        if options.mode != "run":  # `rollback --plan` is this plan, shown as it is made
            return Rollback(plan, every_host, ready)
        preview = execute(
            every_host, dataclasses.replace(planning, release_id=plan.target, recorded=plan.recorded), connect=reach
        )
    finally:
        pool.close_all()
    cannot = [r for r in preview.results if r.failed]
    if cannot:
        lines = "\n".join(
            f"  {r.host or CONTROLLER}  {r.step}: {r.status.value}: {r.message}".replace("\n", " ") for r in cannot
        )
        hosts = sorted({r.host or CONTROLLER for r in cannot})
        raise RollbackRefused(
            f"refusing to roll back to {plan.target}: {len(hosts)} host(s) cannot be rolled back, so nothing was "
            f"changed on any host:\n{lines}\nfix them, or leave them out with --limit",
            hosts=hosts,
        )
    # not held to the preview node by node (as `apply` is): a canary Deployment's resourceVersion
    # moves with every status update of a failing rollout, just when a rollback is needed
    return Rollback(plan, Loaded(plan.playbook, inv), ready, preview)


def rollback_report(rollback: Rollback, summary: RunSummary) -> RollbackReport:
    """Which hosts the rollback run (`summary`) moved to its target, which already served it,
    and, when a failure stopped it, which did not move and what they still serve
    (`RollbackReport`, engine/record/live.py; its str() is what `playbook rollback` prints)."""
    from engine.record.live import rollback_report as report
    from engine.record.rollback import SWITCH_MODULES

    switches = {s.id for s in rollback.loaded.playbook.steps if s.module in SWITCH_MODULES}
    return report(rollback.plan.target, rollback.plan.live, switches, summary, rollback.preview)


def drift(loaded: Loaded, options: RunOptions, *, connect: Callable[[str], Any] | None = None) -> DriftReport:
    """How every host differs from what the history says was deployed there
    (engine/record/drift.py): for rsync steps the release `current` points at and the files of
    the live tree against the recorded tree, one read-only probe per host and step, all hosts at
    once (`options.forks`, `options.limit`); for canary Deployments the recorded image and
    active colour, for `helm_bump` the recorded image fields (engine/record/drift_pinned.py).
    Nothing is written on any host, cluster or repository, nor in the history.
    `report.exit_code` is 0 (no drift), 2 (drift) or 1 (a host could not be read). `connect`
    replaces the SSH pool (tests)."""
    from engine.record.drift import DriftReport, drift_playbook, drift_report, recorded_deploys
    from engine.record.drift_pinned import recorded_pins
    from engine.record.history import History

    pb = loaded.playbook
    rsyncs = [s for s in pb.steps if s.module == "rsync"]
    hosts = resolve_fleets(pb, loaded.inventory, options.limit)
    wanted = {(s.id, h) for s in rsyncs for h in hosts.get(s.fleet, [])}
    hist = History(options.state_dir)
    try:
        recorded = recorded_deploys(hist, pb.name, rsyncs, wanted)
        pins = recorded_pins(hist, pb.name, pb)
    finally:
        hist.close()
    reads = drift_playbook(pb, recorded, pins)
    if reads.playbook is None:
        return DriftReport(pb.name, ())
    reading = Loaded(reads.playbook, loaded.inventory)
    check(reading, options.extra_vars, options.limit)
    planning = dataclasses.replace(options, mode="plan", run_id="", release_id="", expected=None, done=None)
    summary = execute(reading, planning, connect=connect)
    return drift_report(pb.name, summary, recorded, reads.pinned)
