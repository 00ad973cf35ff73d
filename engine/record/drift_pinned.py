"""`playbook drift` beyond the hosts' trees: each canary Deployment's image and active colour
(`canary_switch`) and the image fields `helm_bump` pushed to the GitOps repository.

The newest successful record says what should be live: per Kubernetes target, the colour the
last `canary_switch` result left active (`selector`) and, per Deployment, the image the last
`deploy`, `set_image` or `revert` (or a rollback's revert) set; per `helm_bump` step, the tag and digest it
set. Each is planned again, read-only, pinned to that record the way a rollback pins it
(engine/record/rollback.py): `canary_switch` `switch` to the recorded colour and `revert` to the
recorded image, `helm_bump` with the recorded tag and digest. A plan that would change something
is drift, and its diffs say what the cluster or the repository has instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engine.model.config import CONTROLLER, Fleet, Playbook, Step
from engine.record.history import History

__all__ = ["Pin", "recorded_pins", "pinned_steps", "differences", "CANARY_NAMING"]

#: the `canary_switch` arguments that say where its objects are (kept in the pinned steps)
CANARY_NAMING = ("configmap", "configmap_key", "service", "selector_label", "deployment", "colours")
_IMAGE_ACTIONS = ("set_image", "revert", "deploy")  # and a templated action (`{{ canary_action }}`)
_POLICY_ARGS = ("tags", "tag_pattern", "tag_order", "semver_range")  # `policy` names the fields


@dataclass(frozen=True)
class Pin:
    """One recorded value to compare: `kind` `image` (of `deployment`, on colour `colour`),
    `selector` (the active colour) or `values` (`helm_bump`'s image `value`, tag `tag`), for the
    playbook step `step` on `host` (None: the controller)."""

    kind: str
    step: str
    host: str | None
    value: str
    run_id: str
    when: float
    by: str = "run"
    colour: str = ""
    deployment: str = ""
    tag: str = ""


def _origin(step: str, ids: set[str]) -> tuple[str, str] | None:
    """(playbook step id, "run" | "rollback") of a recorded step id, or None."""
    if step in ids:
        return step, "run"
    if step.startswith("rollback_"):
        rest = step[len("rollback_") :]
        for sid in ids:
            if rest == sid or (rest.startswith(sid + "_") and rest[len(sid) + 1 :].isdigit()):
                return sid, "rollback"
    return None


def recorded_pins(history: History, name: str, playbook: Playbook) -> list[Pin]:
    """The newest successful record of every canary colour, canary Deployment image and
    helm_bump step of `playbook`."""
    canary = {s.id: s for s in playbook.steps if s.module == "canary_switch"}
    helm = {s.id: s for s in playbook.steps if s.module == "helm_bump"}
    if not canary and not helm:
        return []
    found: dict[tuple, Pin] = {}
    # every result records the colour active after it; the step that sets it names the finding
    switches = [s.id for s in canary.values() if str(s.args.get("action", "")) == "switch"]
    for run in history.runs(name, limit=10_000):  # newest first, and the last step of a run first
        for res in reversed(history.results(run.run_id)):
            if res["status"] not in ("ok", "changed"):
                continue
            outs, host = res["outputs"], res["host"]
            hit = _origin(res["step"], set(canary))
            if hit is not None and host is not None:
                sid, by = hit
                if outs.get("selector") and (host, "selector") not in found:
                    named = switches[0] if switches else sid
                    found[(host, "selector")] = Pin(
                        "selector", named, host, str(outs["selector"]), run.run_id, run.started, by
                    )
                action = "revert" if by == "rollback" else str(canary[sid].args.get("action", ""))
                dep = str(outs.get("deployment") or "")
                sets_image = action in _IMAGE_ACTIONS or "{{" in action
                if sets_image and dep and outs.get("image") and (host, "image", dep) not in found:
                    found[(host, "image", dep)] = Pin(
                        "image", sid, host, str(outs["image"]), run.run_id, run.started, by,
                        colour=str(outs.get("colour") or ""), deployment=dep,
                    )  # fmt: skip
                continue
            hit = _origin(res["step"], set(helm))
            if (
                hit is not None
                and host is None
                and (hit[0], "values") not in found
                and (outs.get("tag") or outs.get("image"))
            ):
                found[(hit[0], "values")] = Pin(
                    "values", hit[0], None, str(outs.get("image") or ""), run.run_id, run.started, hit[1],
                    tag=str(outs.get("tag") or ""),
                )  # fmt: skip
    return sorted(found.values(), key=lambda p: (p.kind, p.step, p.host or "", p.deployment))


def pinned_steps(
    playbook: Playbook, pins: Iterable[Pin], prefix: str
) -> tuple[list[Step], dict[str, Fleet], dict[str, list[Pin]]]:
    """The read-only steps that compare `pins` (one per kind and value, on the hosts that
    recorded it), the fleets they run on, and which pins each step compares."""
    by_id = {s.id: s for s in playbook.steps}
    groups: dict[tuple, list[Pin]] = {}
    for p in pins:
        key = (p.kind, p.step, p.value, p.colour, p.tag)
        groups.setdefault(key, []).append(p)
    steps: list[Step] = []
    fleets: dict[str, Fleet] = {}
    compared: dict[str, list[Pin]] = {}
    for i, ((kind, sid, value, colour, tag), group) in enumerate(sorted(groups.items())):
        orig = by_id[sid]
        gid = f"{prefix}{kind}_{sid}_{i}" if kind != "values" else f"{prefix}{sid}"
        if kind == "values":
            args = {k: v for k, v in orig.args.items() if k not in _POLICY_ARGS}
            if tag:
                args["tag"] = tag
            if "@sha256:" in value:
                args["digest"] = value.split("@", 1)[1]
            fleet = CONTROLLER
        else:
            args = {k: v for k, v in orig.args.items() if k in (*CANARY_NAMING, "container")}
            args.update(
                {"action": "switch", "to": value} if kind == "selector" else {"action": "revert", "image": value}
            )
            if kind == "image" and colour:
                args["colour"] = colour
            fleet = f"_{gid}"
            fleets[fleet] = Fleet(fleet, ",".join(sorted({p.host for p in group if p.host})), lock=False)
        steps.append(
            Step(gid, orig.module, fleet, args, location=orig.location, description=f"compare {sid} with its record")
        )
        compared[gid] = group
    return steps, fleets, compared


def differences(kind: str, plan: Any) -> list[tuple[str, str]]:
    """(what, how it differs) from a pinned step's plan that would change something: the diffs
    of a canary plan (what is live first, what the history says second), the fields a
    `helm_bump` plan would set back (its reason), or the reason when there are no diffs."""
    out = []
    reason = str(getattr(plan, "reason", ""))
    if kind == "values":
        return [("", f"the repository differs from the record ({reason}: the repository's value -> the recorded one)")]
    for d in getattr(plan, "diffs", ()) or ():
        if d.before is None or d.after is None or d.header == "commit":
            continue
        before, after = d.before.strip(), d.after.strip()
        if len(before) + len(after) > 400:  # a whole file: the reason names the fields
            continue
        out.append((d.header, f"is {before}, the history says {after}"))
    if not out:
        out.append(("", f"differs from the record: {reason}"))
    return out
