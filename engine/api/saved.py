"""Saved plans: write one (`save_plan`) and apply exactly it (`prepare_apply`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.api.executing import execute
from engine.api.loading import check, load
from engine.execute.options import RunOptions
from engine.load.inputs import resolve_secrets
from engine.model.config import Loaded
from engine.model.results import RunSummary

if TYPE_CHECKING:  # imported where used, as every heavy import here
    from engine.execute.shard import Shard
    from engine.record.plansign import PlanKey

__all__ = ["plan_key", "save_plan", "SavedApply", "prepare_apply", "CONFIGURED_KEY"]


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
    # the run that applies the plan sees the hosts and vars of the plan that verifies it
    options = dataclasses.replace(
        verify,
        mode="run",
        expected=saved.nodes,
        run_id=scope.run_id if shard is not None else "",
        budget=scope.budget,
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
    return SavedApply(loaded, options, saved.plan_hash, frozenset(found))
