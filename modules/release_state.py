"""`release_state`: which release a host's `current` points at, and which releases it has.

`playbook rollback` plans this on every host first, over the read-only connection, so that it
goes back from what is live rather than from what the history says finished (an interrupted
deploy may have switched every host already). Reading changes nothing: the plan is no-change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from engine.model.results import Plan
from engine.module import ApplyContext, PlanContext, arg, register
from modules._support.releases import read_releases

__all__ = ["ReleaseState", "ReleaseStateArgs"]


@dataclass(frozen=True)
class ReleaseStateArgs:
    dest: str = arg(doc="The deploy root holding `releases/` and `current` (an rsync step's `dest`).")


@register
class ReleaseState:
    """Reads where `current` points and which releases are under `releases/` (no tree is
    read). Used by `playbook rollback` to find each host's live release before it plans
    anything."""

    name: ClassVar[str] = "release_state"
    Args: ClassVar[type] = ReleaseStateArgs
    summary: ClassVar[str] = "read a host's live release and the releases it has (used by rollback)"
    outputs: ClassVar[dict[str, str]] = {
        "current": "the release `current` points at; empty when it points nowhere under `releases/`",
        "target": "where the `current` symlink points, as written; empty when there is no symlink",
        "releases": "the complete releases under `releases/`, sorted by name",
    }
    controller_only: ClassVar[bool] = False
    examples: ClassVar[str] = """\
- id: live_sync
  module: release_state
  fleet: web
  args:
    dest: /var/www/app
"""

    def plan(self, ctx: PlanContext, args: ReleaseStateArgs) -> Plan:
        state = read_releases(ctx.conn, args.dest, timeout=ctx.remaining())
        current = state.current_release or ""
        if current:
            why = f"current is releases/{current}"
        elif state.current_blocked:
            why = f"{args.dest}/current is not a symlink"
        elif state.current_target:
            why = f"current points outside {args.dest}/releases ({state.current_target})"
        else:
            why = f"no release is live under {args.dest}"
        outputs = {"current": current, "target": state.current_target or "", "releases": list(state.releases)}
        return Plan.no_change(why, outputs=outputs, fingerprint=outputs)

    def apply(self, ctx: ApplyContext, plan: Plan) -> None:  # pragma: no cover - a plan here never changes
        return None
