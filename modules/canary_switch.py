"""`canary_switch`: the platform team's blue/green canary runbook on Kubernetes.

State lives in the cluster, as the runbook has it: a ConfigMap (`canary-env`, key `canaryEnv`)
holds `{"selector": "blue"|"green", "image": ...}`; a Service selects the active colour's pods
by label; each colour has a Deployment (`blue-deployment`, `green-deployment`).

Actions:
- `deploy`: roll a colour's Deployment to an image pinned by digest, wait for the rollout, then
  make that colour active (ConfigMap and Service). One plan shows every change; any failure puts
  back everything the step changed (image, ConfigMap, selector) and fails the step.
- `switch`: point the Service selector and the ConfigMap at the other colour (or `to`).
- `set_image`: strategic-merge patch of one named container of a colour's Deployment to an image
  pinned by digest (other containers, ports and env untouched), then wait for the rollout. On
  any failure the previous image is restored, and so is the selector if this run switched it.
- `wait`: wait for a rollout; on failure, revert to the last healthy image (and the selector).
- `revert`: set the image back to a healthy digest (`image`, or the last one recorded).

The state is read by modules/_support/canary_state.py and written by canary_ops.py; the client
boundary, where every kubernetes error is translated, is modules/_support/kube.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from engine.errors import ArgError, ModuleError, PlaybookError
from engine.model.results import Diff, Plan
from engine.module import ApplyContext, PlanContext, arg, register
from modules._support import canary_ops as ops
from modules._support.canary_state import (
    HEALTHY_ANNOTATION,
    SWITCH_ANNOTATION,
    State,
    container,
    env_text,
    fingerprint,
    healthy,
    read_state,
    require_digest,
    rollout_state,
    switch_mark,
)
from modules._support.kube import Forbidden, Kube

__all__ = ["CanarySwitch", "CanaryArgs", "rollout_state", "HEALTHY_ANNOTATION", "SWITCH_ANNOTATION"]

Action = Literal["deploy", "switch", "set_image", "wait", "revert"]


@dataclass(frozen=True)
class CanaryArgs:
    action: Action = arg(
        doc="`deploy` a colour (image, rollout, then switch), `switch` the active colour, `set_image` on a colour's Deployment, `wait` for its rollout, or `revert` it to a healthy digest."
    )
    to: str | None = arg(None, doc="`switch`: the colour to make active (default: the other one).")
    colour: str | None = arg(
        None,
        doc="`deploy`: the colour to roll and make active (default: the idle one). `set_image`/`wait`/`revert`: whose Deployment (default: the active colour in the ConfigMap).",
    )
    image: str | None = arg(
        None,
        doc="`deploy`/`set_image`: the image by digest, `repo@sha256:<hex>`. `revert`: the healthy image to go back to (unset or empty: the last one recorded healthy that is not the current one).",
    )
    container: str = arg("web", doc="The container whose image is set; other containers are left alone.")
    configmap: str = arg("canary-env", doc="Name of the ConfigMap holding the canary state.")
    configmap_key: str = arg(
        "canaryEnv", doc='Key in the ConfigMap\'s data holding `{"selector": ..., "image": ...}` as JSON.'
    )
    service: str = arg("canary", doc="The Service whose selector picks the active colour.")
    selector_label: str = arg("app", doc="The label of the Service selector (and pods) that carries the colour.")
    deployment: str = arg("{colour}-deployment", doc="Deployment name; `{colour}` is replaced by the colour.")
    colours: tuple[str, ...] = arg(("blue", "green"), doc="The two colours.")
    wait: bool = arg(True, doc="`set_image`/`revert`: wait for the rollout to complete.")
    timeout_seconds: int = arg(
        300,
        doc="How long a rollout may take before it counts as failed (a Deployment reporting ProgressDeadlineExceeded fails at once).",
    )
    revert_on_failure: bool = arg(
        True,
        doc="Restore the previous image (and the selector, if this run switched it) when the rollout fails or times out.",
    )


def _other(args: CanaryArgs, colour: str) -> str:
    return next(c for c in args.colours if c != colour)


def _need(kube: Kube, verbs: list[tuple[str, str, str]]) -> None:
    """Refuse before anything changes when these credentials lack a write the step will make."""
    missing = [f"{verb} {kind} '{name}'" for verb, kind, name in verbs if not kube.allowed(verb, kind, name)]
    if missing:
        raise Forbidden(f"not allowed to {', '.join(missing)} in namespace '{kube.namespace}'", path=kube.host)


def _image_diff(kube: Kube, dep: Any, name: str, before: str, after: str) -> Diff:
    return Diff(
        header=f"deployment/{dep.metadata.name} container {name} ({kube.namespace})",
        before=f"image: {before}\n",
        after=f"image: {after}\n",
    )


def _env_diff(kube: Kube, args: CanaryArgs, state: State, after: dict[str, Any]) -> Diff:
    return Diff(
        header=f"configmap/{args.configmap} data.{args.configmap_key} ({kube.namespace})",
        before=env_text(state.env) + "\n",
        after=env_text(after) + "\n",
    )


def _selector_diff(kube: Kube, name: str, selector: dict[str, str], label: str, to: str) -> Diff:
    return Diff(
        header=f"service/{name} spec.selector ({kube.namespace})",
        before="".join(f"{k}: {v}\n" for k, v in selector.items()),
        after="".join(f"{k}: {v}\n" for k, v in {**selector, label: to}.items()),
    )


@register
class CanarySwitch:
    """Blue/green canary on a Kubernetes target: deploy a colour (image by digest, rollout,
    switch) with everything put back when any part fails, switch the active colour, set a
    colour's image, wait for the rollout, or revert to a recorded healthy digest. The dry run
    shows the ConfigMap, Service and Deployment changes."""

    name: ClassVar[str] = "canary_switch"
    Args: ClassVar[type] = CanaryArgs
    summary: ClassVar[str] = "blue/green canary on Kubernetes: deploy, switch selector, set image by digest, revert"
    outputs: ClassVar[dict[str, str]] = {
        "selector": "the active colour after the step",
        "colour": "the colour whose Deployment the step acts on",
        "deployment": "that Deployment's name",
        "image": "the container's image after the step",
        "previous_image": "the container's image before the step",
    }
    controller_only: ClassVar[bool] = False

    # -- planning --------------------------------------------------------------------------------

    def plan(self, ctx: PlanContext, args: CanaryArgs) -> Plan:
        where = f"{ctx.step}.args"
        if len(args.colours) != 2 or len(set(args.colours)) != 2:
            raise ArgError(f"'colours' must be two different names (got {list(args.colours)})", path=where)
        if args.timeout_seconds < 1:
            raise ArgError(f"'timeout_seconds' must be at least 1 (got {args.timeout_seconds})", path=where)
        if args.image == "":
            args = dataclasses.replace(args, image=None)  # an unset playbook var renders as ""
        kube = Kube(ctx.target, ctx.step)
        try:
            state = read_state(kube, args)
            try:
                if args.action in ("deploy", "set_image"):
                    require_digest(args.image, where)
                if args.action == "switch":
                    return self._plan_switch(kube, args, state, where)
                if args.action == "deploy":
                    return self._plan_deploy(kube, args, state, where)
                return self._plan_image(kube, args, state, where)
            except PlaybookError as exc:
                if ctx.mode == "run" and exc.certain and args.action == "set_image":
                    return self._plan_undo_switch(kube, args, state, ctx.run_id, exc)
                raise
        finally:
            kube.close()

    def _colour(self, args: CanaryArgs, colour: str | None, where: str, name: str = "colour") -> str:
        if colour not in args.colours:
            raise ArgError(f"'{name}' must be one of {', '.join(args.colours)} (got {colour!r})", path=where)
        return colour

    def _plan_switch(self, kube: Kube, args: CanaryArgs, state: State, where: str) -> Plan:
        current = state.selector
        to = self._colour(args, args.to or _other(args, current), where, "to")
        dep = kube.read("deployment", args.deployment.format(colour=to))  # never switch to nothing
        svc_sel = dict(state.svc.spec.selector or {})
        image = state.env.get("image", "")
        outputs = {"selector": to, "colour": to, "deployment": dep.metadata.name, "image": image}
        outputs["previous_image"] = image
        fp = fingerprint(state)
        if current == to and svc_sel.get(args.selector_label) == to:
            return Plan.no_change(f"'{to}' is already active", outputs=outputs, fingerprint=fp)
        _need(kube, [("patch", "configmap", args.configmap), ("patch", "service", args.service)])
        diffs = []
        if current != to:
            diffs.append(_env_diff(kube, args, state, {**state.env, "selector": to}))
        if svc_sel.get(args.selector_label) != to:
            diffs.append(_selector_diff(kube, args.service, svc_sel, args.selector_label, to))
        complete, text = rollout_state(dep)
        reason = f"switch {current} -> {to}" + (
            "" if complete else f" (warning: {dep.metadata.name} is not rolled out: {text})"
        )
        data = {"args": args, "from": current, "to": to}
        return Plan.will_change(reason, diffs=tuple(diffs), outputs=outputs, fingerprint=fp, data=data)

    def _plan_deploy(self, kube: Kube, args: CanaryArgs, state: State, where: str) -> Plan:
        to = self._colour(args, args.colour or _other(args, state.selector), where)
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
            diffs.append(_image_diff(kube, dep, args.container, current, image))
            writes.append(("patch", "deployment", dep.metadata.name))
        if env_after != state.env:
            diffs.append(_env_diff(kube, args, state, env_after))
            writes.append(("patch", "configmap", args.configmap))
        if svc_sel.get(args.selector_label) != to:
            diffs.append(_selector_diff(kube, args.service, svc_sel, args.selector_label, to))
            writes.append(("patch", "service", args.service))
        if not diffs and complete:
            return Plan.no_change(f"'{to}' is active and runs {image}", outputs=outputs, fingerprint=fp)
        _need(kube, writes)
        steps = [f"roll {dep.metadata.name} to {image}"] if current != image else [f"wait for {dep.metadata.name}"]
        if state.selector != to or svc_sel.get(args.selector_label) != to:
            steps.append(f"switch {state.selector} -> {to}")
        data = {"args": args, "to": to, "deployment": dep.metadata.name, "image": image, "previous": current}
        data["was_complete"] = complete is True
        return Plan.will_change(", then ".join(steps), diffs=tuple(diffs), outputs=outputs, fingerprint=fp, data=data)

    def _plan_image(self, kube: Kube, args: CanaryArgs, state: State, where: str) -> Plan:
        colour = self._colour(args, args.colour or state.selector, where)
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
            diffs.append(_image_diff(kube, dep, args.container, current, image))
            writes.append(("patch", "deployment", dep.metadata.name))
        if cm_stale:
            diffs.append(_env_diff(kube, args, state, {**state.env, "image": image}))
            writes.append(("patch", "configmap", args.configmap))
        _need(kube, writes)
        data.update(image=image, previous=current, was_complete=complete is True)
        return Plan.will_change(why, diffs=tuple(diffs), outputs=outputs, fingerprint=fp, data=data)

    def _plan_undo_switch(self, kube: Kube, args: CanaryArgs, state: State, run_id: str, exc: PlaybookError) -> Plan:
        """This run switched the selector and now `set_image` cannot go on: the step's apply puts
        the switch back, then fails with `exc`."""
        mark = switch_mark(state.cm)
        if mark.get("run") != run_id or state.selector != mark.get("to") or mark.get("from") not in args.colours:
            raise exc
        back = str(mark["from"])
        env_after = {**state.env, "selector": back, "image": mark.get("image")}
        svc_sel = dict(state.svc.spec.selector or {})
        diffs = (
            _env_diff(kube, args, state, env_after),
            _selector_diff(kube, args.service, svc_sel, args.selector_label, back),
        )
        data = {"args": args, "undo_switch": back, "error": str(exc)}
        return Plan.will_change(f"switch back to {back}: {exc}", diffs=diffs, fingerprint=fingerprint(state), data=data)

    # -- applying --------------------------------------------------------------------------------

    def apply(self, ctx: ApplyContext, plan: Plan) -> dict[str, Any]:
        d = dict(plan.data)
        args: CanaryArgs = d["args"]
        kube = Kube(ctx.target, ctx.step)
        try:
            if "undo_switch" in d:
                back = ops.revert_switch(kube, args, _active(kube, args), ctx.run_id)
                done = f"selector back to {back}" if back else "nothing (the switch was changed since)"
                raise ModuleError(f"{d['error']}; reverted: {done}", path=kube.host)
            if args.action == "switch":
                ops.switch(kube, args, d["to"], ctx.run_id)
                ctx.emit(f"canary: switched {d['from']} -> {d['to']}")
                return {"selector": d["to"]}
            if args.action == "deploy":
                return self._deploy(ctx, kube, args, d)
            if args.action == "wait":
                self._wait_or_revert(ctx, kube, args, d, ops.Undo(kube, args, ctx.run_id))
                return {}
            return self._set_image(ctx, kube, args, d)
        finally:
            kube.close()

    def _deploy(self, ctx: ApplyContext, kube: Kube, args: CanaryArgs, d: dict[str, Any]) -> dict[str, Any]:
        """Image, rollout, switch; any failure undoes what this step did, in reverse."""
        undo = ops.Undo(kube, args, ctx.run_id)
        name, to = d["deployment"], d["to"]
        try:
            replaced = ops.set_image(kube, args, name, to, d["image"], record_current=d["was_complete"])
            if replaced:
                undo.image(name, to, replaced)
                ctx.emit(f"canary: {name} container '{args.container}' -> {d['image']}")
            self._wait_or_revert(ctx, kube, args, d, undo)
            state = read_state(kube, args)
            if state.selector != to or (state.svc.spec.selector or {}).get(args.selector_label) != to:
                undo.switched(state.selector, state.env.get("image"))
                ops.switch(kube, args, to, ctx.run_id, image=d["image"])
                ctx.emit(f"canary: switched {state.selector} -> {to}")
        except PlaybookError as exc:
            if not undo.steps or not args.revert_on_failure:
                raise
            done = undo.restore()
            raise ModuleError(f"{exc.message}; reverted: {', '.join(done)}", path=kube.host) from None
        return {"selector": to, "image": d["image"]}

    def _set_image(self, ctx: ApplyContext, kube: Kube, args: CanaryArgs, d: dict[str, Any]) -> dict[str, Any]:
        undo = ops.Undo(kube, args, ctx.run_id)
        name, colour = d["deployment"], d["colour"]
        try:
            replaced = ops.set_image(
                kube,
                args,
                name,
                colour,
                d["image"],
                record_current=d["was_complete"] and args.action == "set_image",
                drop_current=args.action == "revert",
            )
            if replaced:
                undo.image(name, colour, replaced)
            ctx.emit(f"canary: {name} container '{args.container}' -> {d['image']}")
            if args.wait:
                self._wait_or_revert(ctx, kube, args, d, undo)
        except PlaybookError as exc:
            if not args.revert_on_failure:
                raise
            done = undo.restore()
            back = ops.revert_switch(kube, args, colour, ctx.run_id)
            if back:
                done.append(f"selector back to {back}")
            if not done:
                raise
            raise ModuleError(f"{exc.message}; reverted: {', '.join(done)}", path=kube.host) from None
        return {"image": d["image"]}

    def _wait_or_revert(self, ctx: ApplyContext, kube: Kube, args: CanaryArgs, d: dict[str, Any], undo: Any) -> None:
        """Wait for the rollout; a failed one raises (the caller's `undo` puts things back). For
        `wait`, which changed nothing itself, the revert goes to the last healthy image."""
        name = d["deployment"]
        ctx.emit(f"canary: waiting up to {args.timeout_seconds}s for {name} to roll out")
        ok, text = ops.wait_rollout(ctx, kube, name, args.timeout_seconds)
        if ok:
            ops.record_healthy(kube, args, name)
            ctx.emit(f"canary: {name} rolled out ({text})")
            return
        failure = f"rollout of {name} did not complete within {args.timeout_seconds}s ({text})"
        if "progress deadline exceeded" in text:
            failure = f"rollout of {name} failed: {text}"
        if args.action == "wait" and args.revert_on_failure:
            dep = kube.read("deployment", name)
            current = container(dep, args.container, kube.host).image
            older = [i for i in healthy(read_state(kube, args).cm, name, args.container) if i != current]
            if older:
                ops.set_image(kube, args, name, d["colour"], older[-1])
                undo.steps.clear()
                done = [f"image back to {older[-1]}"]
                back = ops.revert_switch(kube, args, d["colour"], ctx.run_id)
                done += [f"selector back to {back}"] if back else []
                raise ModuleError(f"{failure}; reverted: {', '.join(done)}", path=kube.host)
        raise ModuleError(failure, path=kube.host)


def _active(kube: Kube, args: CanaryArgs) -> str:
    """The active colour in the ConfigMap now."""
    return read_state(kube, args).selector
