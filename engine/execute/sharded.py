"""Preparing one part of a sharded run: a shard (`--shard I/N`) or the coordinator.

`prepare_shard` restricts a run to the shard's hosts and names it `<run id>.s<I>of<N>`;
`prepare_coordinator` checks in the history that every shard of the run finished, then gives the
coordinator phase the steps that run once, with the outputs the shards recorded (what a
template such as `steps.sync.release` sees). Which hosts and steps go where is
engine/execute/shard.py; the user's view is docs/scale.md.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from engine.execute.options import RunOptions, resolve_fleets
from engine.execute.shard import (
    Shard,
    ShardError,
    coordinator_playbook,
    coordinator_steps,
    part_run_id,
    shard_playbook,
)
from engine.model.config import Loaded, Playbook

__all__ = ["shared_run_id", "prepare_shard", "prepare_coordinator", "shard_nodes", "open_history", "shared_locks"]


def open_history(options: RunOptions) -> Any:
    """The run history the options name (the local SQLite store by default)."""
    from engine.record.state import open_history as by_state

    return by_state(options.state, options.state_dir)


def shared_locks(playbook: Playbook, fleet_hosts: Mapping[str, list[str]], options: RunOptions) -> list[Any]:
    """Take the deploy lock of every locked fleet with hosts in the shared backend (the parts of
    one sharded run share them, each part with its lease in its journal); returns what to
    release at the end of the run."""
    from engine.record.state import open_store, state_url
    from engine.record.state.s3lock import hold

    url = state_url(options.state)
    assert url is not None
    shard = options.shard
    run_id, _, part = options.run_id.partition(".") if shard is not None else (options.run_id, "", "")
    coordinator = shard is not None and shard.coordinator
    fleets = [
        name
        for name, fleet in playbook.fleets.items()
        if fleet.lock and (fleet_hosts.get(name) or coordinator)  # the coordinator locks them all
    ]
    return hold(
        open_store(url),
        fleets,
        run_id=run_id,
        part=part or "run",
        playbook=playbook.path,
        total=shard.total if shard is not None else 0,
    )


def shared_run_id(given: str | None, env: Mapping[str, str] | None = None) -> str:
    """The run id every part of a sharded `run` shares: `--run-id`, else `$PLAYBOOK_RUN_ID`,
    else GitLab's `ci<CI_PIPELINE_ID>`; "" when none is set."""
    env = os.environ if env is None else env
    if given:
        return given
    if env.get("PLAYBOOK_RUN_ID"):
        return env["PLAYBOOK_RUN_ID"]
    if env.get("CI_PIPELINE_ID"):
        return f"ci{env['CI_PIPELINE_ID']}"
    return ""


def _check_run_id(run_id: str) -> str:
    if not run_id or not all(c.isalnum() or c in "-_" for c in run_id):
        raise ShardError(
            f"a sharded run needs one run id for all its parts, of letters, digits, '-' and '_' "
            f"(got {run_id!r}): pass --run-id, set PLAYBOOK_RUN_ID, or run in a GitLab pipeline (CI_PIPELINE_ID)"
        )
    return run_id


def prepare_shard(loaded: Loaded, options: RunOptions, shard: Shard, run_id: str, *, resume: bool = False) -> Loaded:
    """Restrict `options` to the shard's hosts and return the playbook the shard runs. In run
    mode the part is recorded as `<run_id>.s<I>of<N>` and needs the run's release id (every
    shard deploys the same release; a `resume` takes it from the history)."""
    options.shard = shard
    if shard.coordinator:
        raise ShardError("internal: the coordinator is prepared by prepare_coordinator")
    fleet_hosts = resolve_fleets(loaded.playbook, loaded.inventory, options.limit)
    restricted, hosts = shard_playbook(loaded, shard, fleet_hosts)
    options.only_hosts = hosts
    if options.mode == "run" and options.state and run_id:
        from engine.record.state import open_store, state_url
        from engine.record.state.budget import SharedBudget

        url = state_url(options.state)
        assert url is not None
        options.budget = SharedBudget(
            open_store(url), _check_run_id(run_id), {name: len(hs) for name, hs in fleet_hosts.items()}
        )
    if options.mode == "run":
        options.run_id = part_run_id(_check_run_id(run_id), shard)
        if not options.release_id:
            options.release_id = os.environ.get("PLAYBOOK_RELEASE_ID", "")
        if not options.release_id and not resume:
            raise ShardError(
                "a sharded run needs one release id for all its shards: pass --release-id (e.g. "
                "$(date -u +%Y%m%dT%H%M%SZ), made once in the pipeline) or set PLAYBOOK_RELEASE_ID, "
                "or apply a saved plan with --shard (it carries its release id)"
            )
    return restricted


def shard_nodes(
    nodes: Mapping[tuple[str, str | None], Any], loaded: Loaded, options: RunOptions
) -> dict[tuple[str, str | None], Any]:
    """The nodes of a saved plan that this part (`options.shard`) runs."""
    steps = {s.id for s in loaded.playbook.steps}
    hosts = options.only_hosts
    return {
        (step, host): n
        for (step, host), n in nodes.items()
        if step in steps and (host is None or hosts is None or host in hosts)
    }


def prepare_coordinator(loaded: Loaded, options: RunOptions, run_id: str) -> Loaded:
    """Make `options` the coordinator phase of run `run_id`: every shard must have finished
    (status ok); their hosts' outputs become `options.recorded`; the part is `<run_id>.coord`."""
    from engine.execute.shard import COORDINATOR

    run_id = _check_run_id(run_id)
    options.shard = COORDINATOR
    fleet_hosts = resolve_fleets(loaded.playbook, loaded.inventory, options.limit)
    restricted, sharded = coordinator_playbook(loaded, fleet_hosts)
    once = coordinator_steps(loaded.playbook, loaded.inventory, fleet_hosts)
    options.only_hosts = frozenset(h for s in restricted.playbook.steps for h in fleet_hosts.get(s.fleet, []))
    hist = open_history(options)
    try:
        parts = [r for r in hist.runs(None, mode=None, limit=100_000) if r.run_id.startswith(f"{run_id}.s")]
        totals = {r.run_id.rsplit("of", 1)[-1] for r in parts}
        if sharded and not parts:
            raise ShardError(
                f"coordinator: no shard of run {run_id} is in the history ({hist.path}): run the shards first"
            )
        if len(totals) > 1:
            raise ShardError(f"coordinator: run {run_id} has shards of different totals ({', '.join(sorted(totals))})")
        total = int(totals.pop()) if totals else 0
        by_part = {r.run_id: r for r in parts}
        missing = [str(i) for i in range(1, total + 1) if f"{run_id}.s{i}of{total}" not in by_part]
        if missing:
            raise ShardError(
                f"coordinator: shard(s) {', '.join(m + '/' + str(total) for m in missing)} of run {run_id} "
                f"never started: run them first"
            )
        unfinished = sorted(r.run_id for r in parts if r.status != "ok")
        if unfinished:
            states = ", ".join(f"{p} ({by_part[p].status})" for p in unfinished)
            raise ShardError(
                f"coordinator: not every shard of run {run_id} finished ok: {states}; the steps that run "
                f"once ({', '.join(sorted(once))}) are not run. Resume them with --resume {run_id} --shard I/N"
            )
        releases = {r.release_id for r in parts if r.release_id}
        if len(releases) > 1:
            raise ShardError(f"coordinator: the shards of run {run_id} deployed different releases: {sorted(releases)}")
        recorded: dict[tuple[str, str | None], Mapping[str, Any]] = dict(options.recorded or {})
        for part in sorted(by_part):
            for res in hist.results(part):  # later rows (a resume) win
                if res["step"] in sharded and res["status"] in ("ok", "changed"):
                    recorded[(res["step"], res["host"])] = res["outputs"]
    finally:
        hist.close()
    if releases:
        options.release_id = options.release_id or releases.pop()
        if options.release_id not in {r.release_id for r in parts}:
            raise ShardError(f"coordinator: --release-id {options.release_id} is not the release the shards deployed")
    if options.mode == "run" and not options.release_id:
        options.release_id = os.environ.get("PLAYBOOK_RELEASE_ID", "")
    options.recorded = recorded
    if options.mode == "run":
        options.run_id = part_run_id(run_id, COORDINATOR)
    return dataclasses.replace(loaded, playbook=restricted.playbook)
