"""`release_switch`: point `current` at a release that is still on the host (rollback)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from engine.errors import ModuleError
from engine.module import ApplyContext, PlanContext, arg, register
from engine.releases import read_state, switch_current
from engine.results import Diff, Plan

__all__ = ["ReleaseSwitch"]


@dataclass(frozen=True)
class ReleaseSwitchArgs:
    dest: str = arg(doc="The deploy root holding `releases/` and `current` (an rsync step's `dest`).")
    release: str = arg(doc="Release id to make live, e.g. `20261124T051500Z`.")


@register
class ReleaseSwitch:
    """Switches `current` to an existing `releases/<release>` by a temporary symlink and
    rename(2). Used by `playbook rollback`; fails, naming the releases present, when that
    release is no longer on the host (removed by `keep`)."""

    name: ClassVar[str] = "release_switch"
    Args: ClassVar[type] = ReleaseSwitchArgs
    summary: ClassVar[str] = "point current at a release still on the host (used by rollback)"
    outputs: ClassVar[dict[str, str]] = {"release": "the live release after the step", "previous": "the release before"}
    controller_only: ClassVar[bool] = False

    def plan(self, ctx: PlanContext, args: ReleaseSwitchArgs) -> Plan:
        state = read_state(ctx.conn, args.dest, releases=True)
        outputs = {"release": args.release, "previous": state.current_release or ""}
        fingerprint = {"current": state.current_target, "releases": list(state.releases)}
        if state.current_release == args.release:
            return Plan.no_change(f"current is already releases/{args.release}", outputs=outputs, fingerprint=fingerprint)
        if args.release not in state.releases:
            present = ", ".join(state.releases[-5:]) or "none"
            raise ModuleError(f"release {args.release} is no longer on this host (releases here: {present}); "
                              f"redeploy it instead", path=ctx.host or "")
        return Plan.will_change(
            f"current: releases/{state.current_release} -> releases/{args.release}",
            diffs=(Diff(header=f"{args.dest}/current", before=f"current -> {state.current_target}\n",
                        after=f"current -> releases/{args.release}\n",
                        items=(("->", f"current -> releases/{args.release}"),)),),
            outputs=outputs, fingerprint=fingerprint, data={"dest": args.dest, "release": args.release})

    def apply(self, ctx: ApplyContext, plan: Plan) -> dict[str, object]:
        switch_current(ctx.conn, plan.data["dest"], plan.data["release"], timeout=ctx.remaining())
        return dict(plan.outputs)
