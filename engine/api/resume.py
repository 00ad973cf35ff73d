"""`playbook run --resume`: continue an interrupted run, its sources checked unchanged."""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.api.executing import execute
from engine.execute.options import RunOptions
from engine.model.config import Loaded
from engine.record.savedplan import file_hash

__all__ = ["prepare_resume", "plan_sources"]


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
    fresh = plan_sources(loaded, options, set(recorded))
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


def plan_sources(loaded: Loaded, options: RunOptions, names: set[str]) -> dict[str, Any]:
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
