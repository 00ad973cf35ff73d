"""`release_switch`: point `current` at a recorded release (rollback).

Where the release is still on the host, `current` is switched to it by a temporary symlink and
rename(2). Where `keep` has removed it, and `src` names the bytes it was deployed from (rollback
passes the recorded artifact, see `recorded_artifact`), the release is built again under its
own name exactly as the `rsync` step built it (same `sync` arguments: excludes, modes, shared
paths, keep), seeded from the live release by hard links, and then made live.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from engine.argschema import build
from engine.errors import ModuleError
from engine.model.results import Change, Diff, Plan
from engine.module import ApplyContext, PlanContext, arg, register
from modules._support.releases import read_releases, switch_current

__all__ = ["ReleaseSwitch", "ReleaseSwitchArgs"]

# rsync arguments a rebuild takes from the original step; `src`, `dest` and `releases` are fixed
_SYNC_FIXED = ("src", "dest", "releases")


@dataclass(frozen=True)
class ReleaseSwitchArgs:
    dest: str = arg(doc="The deploy root holding `releases/` and `current` (an rsync step's `dest`).")
    release: str = arg(doc="Release id to make live, e.g. `20261124T051500Z`.")
    src: str | None = arg(
        None,
        doc="Where the release is no longer on the host: the controller tree to build it again from (rollback: the recorded artifact). Unset or empty: such hosts fail, naming the releases they have.",
    )
    sync: dict[str, Any] = arg(
        default_factory=dict,
        doc="The original `rsync` step's other arguments (`exclude`, `chmod`, `chown`, `shared`, `checksum`, `keep`, ...), used for that rebuild.",
    )
    unavailable: str | None = arg(None, doc="Why `src` is empty (shown on hosts that need it).")


@register
class ReleaseSwitch:
    """Switches `current` to `releases/<release>` by a temporary symlink and rename(2). Used by
    `playbook rollback`. Where `keep` removed that release, it is rebuilt from `src` (the
    recorded artifact) with the original rsync step's arguments and then switched to; without
    `src` such a host fails, naming the releases it has."""

    name: ClassVar[str] = "release_switch"
    Args: ClassVar[type] = ReleaseSwitchArgs
    summary: ClassVar[str] = (
        "point current at a recorded release, rebuilding it where keep removed it (used by rollback)"
    )
    outputs: ClassVar[dict[str, str]] = {
        "release": "the live release after the step",
        "previous": "the release before",
        "rebuilt": "whether the release had to be built again on this host",
        "changed": "whether `current` moved on this host (what `cache_clear`'s `only_if_changed` reads)",
    }
    controller_only: ClassVar[bool] = False
    examples: ClassVar[str] = """\
- id: back_to_monday
  module: release_switch
  fleet: web
  args:
    dest: /var/www/app
    release: 20261124T051500Z
"""

    def plan(self, ctx: PlanContext, args: ReleaseSwitchArgs) -> Plan:
        state = read_releases(ctx.conn, args.dest, timeout=ctx.remaining())  # `current` and the releases, no tree
        outputs = {"release": args.release, "previous": state.current_release or "", "rebuilt": False, "changed": True}
        fingerprint = {"current": state.current_target, "releases": list(state.releases)}
        if state.current_release == args.release:
            return Plan.no_change(
                f"current is already releases/{args.release}",
                outputs={**outputs, "changed": False},
                fingerprint=fingerprint,
            )
        if args.release not in state.releases:
            return self._rebuild(ctx, args, state)
        return Plan.will_change(
            f"current: releases/{state.current_release} -> releases/{args.release}",
            diffs=(
                Diff(
                    header=f"{args.dest}/current",
                    before=f"current -> {state.current_target}\n",
                    after=f"current -> releases/{args.release}\n",
                    items=(("->", f"current -> releases/{args.release}"),),
                ),
            ),
            outputs=outputs,
            fingerprint=fingerprint,
            data={"dest": args.dest, "release": args.release},
        )

    def _rebuild(self, ctx: PlanContext, args: ReleaseSwitchArgs, state: Any) -> Plan:
        present = ", ".join(state.releases[-5:]) or "none"
        gone = f"release {args.release} is no longer on this host (releases here: {present})"
        if not args.src:
            why = args.unavailable or "no recorded artifact to build it again from"
            raise ModuleError(f"{gone}, and it cannot be rebuilt: {why}", path=ctx.host or "")
        from modules.rsync import Rsync, RsyncArgs

        sync = {k: v for k, v in args.sync.items() if k not in _SYNC_FIXED}
        rsync_args = build(
            RsyncArgs, {**sync, "src": args.src, "dest": args.dest, "releases": True}, path=f"{ctx.step}.args.sync"
        )
        plan = Rsync().plan(dataclasses.replace(ctx, release_id=args.release), rsync_args)
        built = str((plan.outputs or {}).get("release_name", ""))
        rebuilt = plan.change is Change.WILL_CHANGE
        outputs = {"release": built, "previous": state.current_release or "", "rebuilt": rebuilt, "changed": rebuilt}
        if not rebuilt:  # the live release already has exactly these contents
            return Plan.no_change(
                f"{gone}; the live release {built} has the same contents", outputs=outputs, fingerprint=plan.fingerprint
            )
        if built != args.release:
            raise ModuleError(f"{gone}, and rebuilding it would name it {built}", path=ctx.host or "")
        return Plan.will_change(
            f"{gone}: rebuild it from the recorded artifact ({plan.reason})",
            diffs=plan.diffs,
            outputs=outputs,
            fingerprint=plan.fingerprint,
            data={"rebuild": plan.data, "release": args.release},
        )

    def apply(self, ctx: ApplyContext, plan: Plan) -> dict[str, object]:
        if "rebuild" in plan.data:
            from modules.rsync import Rsync

            Rsync().apply(
                dataclasses.replace(ctx, release_id=plan.data["release"]),
                Plan.will_change(plan.reason, data=plan.data["rebuild"]),
            )
            return dict(plan.outputs)
        assert ctx.conn is not None  # the executor gives every apply its host's connection
        switch_current(ctx.conn, plan.data["dest"], plan.data["release"], timeout=ctx.remaining())
        return dict(plan.outputs)
