"""`playbook rollback`: plan a rollback from what is live, refuse one that cannot finish everywhere."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.api.executing import execute
from engine.api.loading import check
from engine.execute.options import RunOptions
from engine.model.config import Loaded
from engine.model.results import RunSummary

if TYPE_CHECKING:  # imported where used, as every heavy import here
    from engine.record.live import RollbackReport
    from engine.record.rollback import RollbackPlan

__all__ = ["Rollback", "prepare_rollback", "rollback_report"]


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
