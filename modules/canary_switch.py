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
from engine.model.results import Plan
from engine.module import ApplyContext, PlanContext, arg, output, register
from modules._support import canary_bluegreen as bluegreen
from modules._support import canary_ops as ops
from modules._support import canary_plan as planning
from modules._support.canary_analysis import Analysis, check_analysis
from modules._support.canary_state import (
    HEALTHY_ANNOTATION,
    SWITCH_ANNOTATION,
    container,
    healthy,
    read_state,
    require_digest,
    rollout_state,
)
from modules._support.kube import Kube, KubeReader

__all__ = ["CanarySwitch", "CanaryArgs", "rollout_state", "HEALTHY_ANNOTATION", "SWITCH_ANNOTATION"]

Action = Literal["deploy", "pause", "promote", "abort", "switch", "set_image", "wait", "revert"]


@dataclass(frozen=True)
class CanaryArgs:
    action: Action = arg(
        doc="`deploy` a colour (image, rollout, checks, then switch), `pause` after the preview is ready, `promote` the previewed colour, `abort` it, `switch` the active colour, `set_image` on a colour's Deployment, `wait` for its rollout, or `revert` it to a healthy digest."
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
        minimum=1,
        doc="How long a rollout may take before it counts as failed (a Deployment reporting ProgressDeadlineExceeded fails at once).",
    )
    preview_service: str | None = arg(
        None,
        doc="The preview Service (Argo's `previewService`): `deploy`/`pause` point it at the idle colour once rolled out, before promotion; created with `service`'s ports when missing.",
    )
    analysis: Analysis | None = arg(
        None,
        doc="Checks before promotion (`prePromotionAnalysis`) and, for `watch_seconds`, after it (`postPromotionAnalysis`): an `http` check and/or a `prometheus` query, `count` times every `interval` seconds.",
    )
    watch_seconds: int = arg(
        0,
        doc="After promotion, run `analysis` every `interval` for this long; a failed check switches the selector back at once (the old colour was never scaled down).",
    )
    scale_down_delay: int | None = arg(
        None,
        doc="After a promotion (and its watch) passed, keep the old colour running this many seconds more (Argo's `scaleDownDelaySeconds`), then scale its Deployment to 0; its replicas are recorded on the ConfigMap and restored when that colour is next deployed. Unset: never scaled down.",
    )
    revert_on_failure: bool = arg(
        True,
        doc="Restore the previous image (and the selector, if this run switched it) when the rollout fails or times out.",
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
        "selector": output("the active colour after the step", str),
        "colour": output("the colour whose Deployment the step acts on", str),
        "deployment": output("that Deployment's name", str),
        "image": output("the container's image after the step", str),
        "previous_image": output("the container's image before the step", str),
    }
    controller_only: ClassVar[bool] = False
    examples: ClassVar[str] = """\
- id: deploy_green
  module: canary_switch
  fleet: shop
  args:
    action: deploy
    colour: green
    image: registry.example.com/shop/web@sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945
    preview_service: canary-preview
- id: green_image
  module: canary_switch
  fleet: shop
  args:
    action: set_image
    colour: green
    image: registry.example.com/shop/web@sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945
- id: go_green
  module: canary_switch
  fleet: shop
  needs: [green_image]
  args:
    action: switch
    to: green
"""

    # -- planning --------------------------------------------------------------------------------

    def plan(self, ctx: PlanContext, args: CanaryArgs) -> Plan:
        where = f"{ctx.step}.args"
        if len(args.colours) != 2 or len(set(args.colours)) != 2:
            raise ArgError(f"'colours' must be two different names (got {list(args.colours)})", path=where)
        if args.timeout_seconds < 1:
            raise ArgError(f"'timeout_seconds' must be at least 1 (got {args.timeout_seconds})", path=where)
        if args.watch_seconds < 0 or (args.scale_down_delay or 0) < 0:
            raise ArgError("'watch_seconds' and 'scale_down_delay' must not be negative", path=where)
        check_analysis(args.analysis, where)
        if args.image == "":
            args = dataclasses.replace(args, image=None)  # an unset playbook var renders as ""
        kube = KubeReader(ctx)  # plan reads only (and asks `can_i`): a reader has no write method
        try:
            state = read_state(kube, args)
            try:
                if args.action in ("deploy", "set_image"):
                    require_digest(args.image, where)
                if bluegreen.uses_bluegreen(args):
                    return bluegreen.plan_bluegreen(kube, args, state, where)
                if args.action == "switch":
                    return planning.plan_switch(kube, args, state, where)
                if args.action == "deploy":
                    return planning.plan_deploy(kube, args, state, where)
                return planning.plan_image(kube, args, state, where)
            except PlaybookError as exc:
                if ctx.mode == "run" and exc.certain and args.action == "set_image":
                    return planning.plan_undo_switch(kube, args, state, ctx.run_id, exc)
                raise
        finally:
            kube.close()

    # -- applying --------------------------------------------------------------------------------

    def apply(self, ctx: ApplyContext, plan: Plan) -> dict[str, Any]:
        d = dict(plan.data)
        args: CanaryArgs = d["args"]
        kube = Kube(ctx)
        try:
            if "undo_switch" in d:
                back = ops.revert_switch(kube, args, _active(kube, args), ctx.run_id)
                done = f"selector back to {back}" if back else "nothing (the switch was changed since)"
                raise ModuleError(f"{d['error']}; reverted: {done}", path=kube.host)
            if d.get("bluegreen"):
                return bluegreen.apply_bluegreen(ctx, kube, args, d)
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
