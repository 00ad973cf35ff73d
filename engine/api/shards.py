"""`--shard`: one part of a sharded run, every shard deploying the sources the first one saw."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.api.resume import plan_sources
from engine.execute.options import RunOptions
from engine.model.config import Loaded

if TYPE_CHECKING:  # imported where used, as every heavy import here
    from engine.execute.shard import Shard

__all__ = ["prepare_part"]


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
    fresh = plan_sources(loaded, options, names)
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
