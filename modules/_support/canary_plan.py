"""`canary_switch` planning: what each action would change, read from the cluster state, with
every change as a Diff and every write checked against the credentials' permissions first."""

from __future__ import annotations

from typing import Any

from engine.errors import ArgError, ModuleError, PlaybookError
from engine.model.results import Diff, Plan
from modules._support.canary_state import (
    State,
    container,
    env_text,
    fingerprint,
    healthy,
    require_digest,
    rollout_state,
    switch_mark,
)
from modules._support.kube import Forbidden, KubeReader

__all__ = [
    "other",
    "need",
    "image_diff",
    "env_diff",
    "selector_diff",
    "colour_arg",
    "plan_switch",
    "plan_deploy",
    "plan_image",
    "plan_undo_switch",
]


def other(args: Any, colour: str) -> str:
    return next(c for c in args.colours if c != colour)


def need(kube: KubeReader, verbs: list[tuple[str, str, str]]) -> None:
    """Refuse before anything changes when these credentials lack a write the step will make."""
    missing = [f"{verb} {kind} '{name}'" for verb, kind, name in verbs if not kube.can_i(verb, kind, name)]
    if missing:
        raise Forbidden(f"not allowed to {', '.join(missing)} in namespace '{kube.namespace}'", path=kube.host)


def image_diff(kube: KubeReader, dep: Any, name: str, before: str, after: str) -> Diff:
    return Diff(
        header=f"deployment/{dep.metadata.name} container {name} ({kube.namespace})",
        before=f"image: {before}\n",
        after=f"image: {after}\n",
    )


def env_diff(kube: KubeReader, args: Any, state: State, after: dict[str, Any]) -> Diff:
    return Diff(
        header=f"configmap/{args.configmap} data.{args.configmap_key} ({kube.namespace})",
        before=env_text(state.env) + "\n",
        after=env_text(after) + "\n",
    )


def selector_diff(kube: KubeReader, name: str, selector: dict[str, str], label: str, to: str) -> Diff:
    return Diff(
        header=f"service/{name} spec.selector ({kube.namespace})",
        before="".join(f"{k}: {v}\n" for k, v in selector.items()),
        after="".join(f"{k}: {v}\n" for k, v in {**selector, label: to}.items()),
    )


def colour_arg(args: Any, colour: str | None, where: str, name: str = "colour") -> str:
    if not isinstance(colour, str) or colour not in args.colours:
        raise ArgError(f"'{name}' must be one of {', '.join(args.colours)} (got {colour!r})", path=where)
    return colour


def plan_switch(kube: KubeReader, args: Any, state: State, where: str) -> Plan:
    current = state.selector
    to = colour_arg(args, args.to or other(args, current), where, "to")
    dep = kube.read("deployment", args.deployment.format(colour=to))  # never switch to nothing
    if dep.spec.replicas == 0 and current != to:
        raise ModuleError(f"{dep.metadata.name} is scaled down to 0: deploy (or pause) it first", path=kube.host)
    svc_sel = dict(state.svc.spec.selector or {})
    image = state.env.get("image", "")
    outputs = {"selector": to, "colour": to, "deployment": dep.metadata.name, "image": image}
    outputs["previous_image"] = image
    fp = fingerprint(state)
    if current == to and svc_sel.get(args.selector_label) == to:
        return Plan.no_change(f"'{to}' is already active", outputs=outputs, fingerprint=fp)
    need(kube, [("patch", "configmap", args.configmap), ("patch", "service", args.service)])
    diffs = []
    if current != to:
        diffs.append(env_diff(kube, args, state, {**state.env, "selector": to}))
    if svc_sel.get(args.selector_label) != to:
        diffs.append(selector_diff(kube, args.service, svc_sel, args.selector_label, to))
    complete, text = rollout_state(dep)
    reason = f"switch {current} -> {to}" + (
        "" if complete else f" (warning: {dep.metadata.name} is not rolled out: {text})"
    )
    data = {"args": args, "from": current, "to": to}
    return Plan.will_change(reason, diffs=tuple(diffs), outputs=outputs, fingerprint=fp, data=data)


def plan_deploy(kube: KubeReader, args: Any, state: State, where: str) -> Plan:
    to = colour_arg(args, args.colour or other(args, state.selector), where)
    image = str(args.image)
    dep = kube.read("deployment", args.deployment.format(colour=to))
    current = container(dep, args.container, where).image
    svc_sel = dict(state.svc.spec.selector or {})
    env_after = {**state.env, "selector": to, "image": image}
    outputs = {"selector": to, "colour": to, "deployment": dep.metadata.name, "image": image}
    outputs["previous_image"] = current
    fp = fingerprint(state, dep)
    complete, text = rollout_state(dep)
    diffs, writes = [], []
    if current != image:
        diffs.append(image_diff(kube, dep, args.container, current, image))
        writes.append(("patch", "deployment", dep.metadata.name))
    if env_after != state.env:
        diffs.append(env_diff(kube, args, state, env_after))
        writes.append(("patch", "configmap", args.configmap))
    if svc_sel.get(args.selector_label) != to:
        diffs.append(selector_diff(kube, args.service, svc_sel, args.selector_label, to))
        writes.append(("patch", "service", args.service))
    if not diffs and complete:
        return Plan.no_change(f"'{to}' is active and runs {image}", outputs=outputs, fingerprint=fp)
    need(kube, writes)
    steps = [f"roll {dep.metadata.name} to {image}"] if current != image else [f"wait for {dep.metadata.name}"]
    if state.selector != to or svc_sel.get(args.selector_label) != to:
        steps.append(f"switch {state.selector} -> {to}")
    data = {"args": args, "to": to, "deployment": dep.metadata.name, "image": image, "previous": current}
    data["was_complete"] = complete is True
    return Plan.will_change(", then ".join(steps), diffs=tuple(diffs), outputs=outputs, fingerprint=fp, data=data)


def plan_image(kube: KubeReader, args: Any, state: State, where: str) -> Plan:
    colour = colour_arg(args, args.colour or state.selector, where)
    dep = kube.read("deployment", args.deployment.format(colour=colour))
    current = container(dep, args.container, where).image
    complete, text = rollout_state(dep)
    fp = fingerprint(state, dep)
    base = {"selector": state.selector, "colour": colour, "deployment": dep.metadata.name}
    base["previous_image"] = current
    data: dict[str, Any] = {"args": args, "colour": colour, "deployment": dep.metadata.name}
    if args.action == "wait":
        outputs = {**base, "image": current}
        if complete:
            return Plan.no_change(f"{dep.metadata.name} is rolled out ({text})", outputs=outputs, fingerprint=fp)
        data.update(image=current, previous=None)
        why = f"wait for {dep.metadata.name} to roll out ({text})"
        return Plan.will_change(why, outputs=outputs, fingerprint=fp, data=data)
    if args.action == "set_image":
        image = str(args.image)
        why = f"set {dep.metadata.name} container '{args.container}' to {image}"
    else:  # revert
        if args.image:
            image = require_digest(args.image, where)
        else:
            older = [i for i in healthy(state.cm, dep.metadata.name, args.container) if i != current]
            if not older:
                raise ModuleError(
                    f"no healthy image recorded for {dep.metadata.name} container '{args.container}' "
                    "other than the current one: give 'image'",
                    path=kube.host,
                )
            image = older[-1]
        why = f"revert {dep.metadata.name} container '{args.container}' to healthy {image}"
    outputs = {**base, "image": image}
    cm_stale = colour == state.selector and state.env.get("image") != image
    if current == image and not cm_stale:
        why = f"{dep.metadata.name} container '{args.container}' already runs {image}"
        return Plan.no_change(why, outputs=outputs, fingerprint=fp)
    diffs, writes = [], []
    if current != image:
        diffs.append(image_diff(kube, dep, args.container, current, image))
        writes.append(("patch", "deployment", dep.metadata.name))
    if cm_stale:
        diffs.append(env_diff(kube, args, state, {**state.env, "image": image}))
        writes.append(("patch", "configmap", args.configmap))
    need(kube, writes)
    data.update(image=image, previous=current, was_complete=complete is True)
    return Plan.will_change(why, diffs=tuple(diffs), outputs=outputs, fingerprint=fp, data=data)


def plan_undo_switch(kube: KubeReader, args: Any, state: State, run_id: str, exc: PlaybookError) -> Plan:
    """This run switched the selector and now `set_image` cannot go on: the step's apply puts
    the switch back, then fails with `exc`."""
    mark = switch_mark(state.cm)
    if mark.get("run") != run_id or state.selector != mark.get("to") or mark.get("from") not in args.colours:
        raise exc
    back = str(mark["from"])
    env_after = {**state.env, "selector": back, "image": mark.get("image")}
    svc_sel = dict(state.svc.spec.selector or {})
    diffs = (
        env_diff(kube, args, state, env_after),
        selector_diff(kube, args.service, svc_sel, args.selector_label, back),
    )
    data = {"args": args, "undo_switch": back, "error": str(exc)}
    return Plan.will_change(f"switch back to {back}: {exc}", diffs=diffs, fingerprint=fingerprint(state), data=data)
