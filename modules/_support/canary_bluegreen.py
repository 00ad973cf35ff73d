"""Blue/green with a preview, as Argo Rollouts does it: the idle colour is rolled to the new image
and shown through a preview Service (`pause` stops there), checked (`analysis`) and only then
made active (`promote`; `deploy` does both), watched for `watch_seconds` with the same checks
and switched back within one interval when one fails; `abort` returns the preview colour to its
last healthy image and the preview to the active colour.

Each action is idempotent: planning compares the cluster with what the action leaves, and a
second run plans no change. A failure before the switch puts back what the step changed; a check
that fails before promotion switches nothing."""

from __future__ import annotations

import time
from typing import Any

from engine.errors import ArgError, ModuleError, PlaybookError
from engine.model.results import Diff, Plan
from modules._support import canary_ops as ops
from modules._support.canary_analysis import measure, run_analysis
from modules._support.canary_plan import colour_arg, env_diff, image_diff, need, other, selector_diff
from modules._support.canary_state import (
    State,
    container,
    fingerprint,
    healthy,
    read_state,
    require_digest,
    rollout_state,
    scaled_down,
)
from modules._support.kube import Kube, KubeReader

__all__ = ["uses_bluegreen", "plan_bluegreen", "apply_bluegreen"]


def uses_bluegreen(args: Any) -> bool:
    return args.action in ("pause", "promote", "abort") or (
        args.action == "deploy" and (args.preview_service is not None or args.analysis is not None)
    )


def plan_bluegreen(kube: KubeReader, args: Any, state: State, where: str) -> Plan:
    if args.action in ("pause", "promote", "abort") and not args.preview_service:
        raise ArgError(f"'{args.action}' needs 'preview_service' (the Service that shows the idle colour)", path=where)
    preview = kube.find("service", args.preview_service) if args.preview_service else None
    on_preview = dict(preview.spec.selector or {}).get(args.selector_label) if preview else None
    if args.action == "abort":
        return _plan_abort(kube, args, state, preview, on_preview)
    active = state.selector
    if args.action == "promote":
        if not args.colour and on_preview not in args.colours:
            shown = "does not exist" if preview is None else f"selects {on_preview!r}"
            raise ArgError(
                f"nothing to promote: preview '{args.preview_service}' {shown}: `pause` (or `deploy`) first", path=where
            )
        target = colour_arg(args, args.colour or on_preview, where)
    else:
        target = colour_arg(args, args.colour or other(args, active), where)
    dep = kube.read("deployment", args.deployment.format(colour=target))
    current = container(dep, args.container, where).image
    image = require_digest(args.image, where) if args.action != "promote" or args.image else current
    complete, text = rollout_state(dep)
    svc_sel = dict(state.svc.spec.selector or {})
    live = active == target and svc_sel.get(args.selector_label) == target
    outputs = {"selector": target if args.action != "pause" else active, "colour": target, "image": image}
    outputs.update(deployment=dep.metadata.name, previous_image=current)
    fp = fingerprint(state, dep)
    if live and current == image and state.env.get("image") == image and args.action != "pause":
        return Plan.no_change(f"'{target}' is active and runs {image}", outputs=outputs, fingerprint=fp)
    if active == target:
        raise ArgError(
            f"'{target}' is the active colour: blue/green rolls the idle one ('{other(args, target)}'); "
            "`set_image` changes the live colour in place",
            path=where,
        )
    diffs: list[Diff] = []
    writes: list[tuple[str, str, str]] = []
    steps: list[str] = []
    pause = args.action in ("deploy", "pause")
    scale_up = scaled_down(state.cm).get(dep.metadata.name) if dep.spec.replicas == 0 else None
    if pause:
        if scale_up:
            header = f"deployment/{dep.metadata.name} replicas ({kube.namespace})"
            diffs.append(Diff(header=header, before="replicas: 0\n", after=f"replicas: {scale_up}\n"))
            writes.append(("patch", "deployment", dep.metadata.name))
            steps.append(f"scale {dep.metadata.name} back to {scale_up}")
        if current != image:
            diffs.append(image_diff(kube, dep, args.container, current, image))
            writes.append(("patch", "deployment", dep.metadata.name))
            steps.append(f"roll {dep.metadata.name} to {image}")
        elif complete is not True:
            steps.append(f"wait for {dep.metadata.name}")
        if not args.preview_service:
            pass  # `deploy` with checks but no preview: the checks name what they look at
        elif preview is None:
            header = f"service/{args.preview_service} (created from service/{args.service}) ({kube.namespace})"
            diffs.append(Diff(header=header, before="", after=f"{args.selector_label}: {target}\n"))
            writes.append(("create", "service", ""))
        elif on_preview != target:
            pv = dict(preview.spec.selector or {})
            diffs.append(selector_diff(kube, args.preview_service, pv, args.selector_label, target))
            writes.append(("patch", "service", args.preview_service))
        if args.preview_service and (preview is None or on_preview != target):
            steps.append(f"preview {args.preview_service} -> {target}")
    elif args.preview_service and on_preview != target:
        raise ArgError(
            f"preview '{args.preview_service}' selects {on_preview!r}, not '{target}': `pause` (or `deploy`) first",
            path=where,
        )
    elif current != image:
        raise ArgError(f"{dep.metadata.name} runs {current}, not {image}: `pause` (or `deploy`) it first", path=where)
    elif complete is not True:
        raise ModuleError(f"{dep.metadata.name} is not rolled out ({text}): `pause` again first", path=kube.host)
    if args.action != "pause":
        env_after = {**state.env, "selector": target, "image": image}
        diffs.append(env_diff(kube, args, state, env_after))
        writes.append(("patch", "configmap", args.configmap))
        if svc_sel.get(args.selector_label) != target:
            diffs.append(selector_diff(kube, args.service, svc_sel, args.selector_label, target))
            writes.append(("patch", "service", args.service))
        if args.analysis is not None:
            steps.append(f"{args.analysis.count} pre-promotion checks every {args.analysis.interval:g}s")
        steps.append(f"switch {active} -> {target}")
        if args.analysis is not None and args.watch_seconds:
            steps.append(f"watch {args.watch_seconds}s")
        if args.scale_down_delay is not None:
            steps.append(f"scale {active} down after {args.scale_down_delay}s more")
    if not diffs and complete is True:
        why = f"preview {args.preview_service} selects '{target}', rolled out on {image}"
        return Plan.no_change(why, outputs=outputs, fingerprint=fp)
    need(kube, writes)
    data = {"args": args, "bluegreen": True, "target": target, "active": active, "deployment": dep.metadata.name}
    data.update(image=image, previous=current, was_complete=complete is True, pause=pause)
    data.update(create_preview=preview is None and bool(args.preview_service))
    data.update(preview_from=on_preview, promote=args.action != "pause", scale_up=scale_up)
    return Plan.will_change(", then ".join(steps), diffs=tuple(diffs), outputs=outputs, fingerprint=fp, data=data)


def _plan_abort(kube: KubeReader, args: Any, state: State, preview: Any, on_preview: str | None) -> Plan:
    active = state.selector
    outputs: dict[str, Any] = {"selector": active, "colour": on_preview or active}
    if preview is None or on_preview == active or on_preview not in args.colours:
        return Plan.no_change(f"nothing to abort: the preview selects the active colour '{active}'", outputs=outputs)
    dep = kube.read("deployment", args.deployment.format(colour=on_preview))
    current = container(dep, args.container, kube.host).image
    older = [i for i in healthy(state.cm, dep.metadata.name, args.container) if i != current]
    if older:
        image = older[-1]
    else:
        live = kube.read("deployment", args.deployment.format(colour=active))
        image = container(live, args.container, kube.host).image
    outputs.update(deployment=dep.metadata.name, image=image, previous_image=current)
    diffs, writes = [], [("patch", "service", args.preview_service)]
    if current != image:
        diffs.append(image_diff(kube, dep, args.container, current, image))
        writes.append(("patch", "deployment", dep.metadata.name))
    pv = dict(preview.spec.selector or {})
    diffs.append(selector_diff(kube, args.preview_service, pv, args.selector_label, active))
    need(kube, writes)
    data = {"args": args, "bluegreen": True, "abort": True, "target": on_preview, "active": active}
    data.update(deployment=dep.metadata.name, image=image)
    why = f"abort: {dep.metadata.name} back to {image}, preview {args.preview_service} -> {active}"
    return Plan.will_change(why, diffs=tuple(diffs), outputs=outputs, fingerprint=fingerprint(state, dep), data=data)


def _point_preview(kube: Kube, args: Any, to: str, create: bool) -> None:
    if create:
        svc = kube.read("service", args.service)
        ports = [
            {k: v for k, v in {"name": p.name, "port": p.port, "targetPort": p.target_port}.items() if v is not None}
            for p in svc.spec.ports or []
        ]
        spec = {"selector": {**dict(svc.spec.selector or {}), args.selector_label: to}, "ports": ports}
        kube.create("service", {"metadata": {"name": args.preview_service}, "spec": spec})
        return
    ops.point_service(kube, args.preview_service, args.selector_label, to)


def apply_bluegreen(ctx: Any, kube: Kube, args: Any, d: dict[str, Any]) -> dict[str, Any]:
    name, target, active = d["deployment"], d["target"], d["active"]
    if d.get("abort"):
        ops.set_image(kube, args, name, target, d["image"], drop_current=True)
        ops.point_service(kube, args.preview_service, args.selector_label, active)
        ctx.emit(f"canary: aborted: {name} back to {d['image']}, preview -> {active}")
        return {"image": d["image"]}
    undo = ops.Undo(kube, args, ctx.run_id)
    try:
        if d["pause"]:
            replaced = ops.set_image(kube, args, name, target, d["image"], record_current=d["was_complete"])
            if replaced:
                undo.image(name, target, replaced)
            if d["scale_up"]:  # after the image: the one it had when scaled down is recorded healthy
                ops.scale(kube, args, name, d["scale_up"])
                undo.steps.append(("replicas back to 0", lambda: ops.scale(kube, args, name, 0, d["scale_up"])))
            ok, text = ops.wait_rollout(ctx, kube, name, args.timeout_seconds)
            if not ok:
                raise ModuleError(f"rollout of {name} did not complete ({text})", path=kube.host)
            if args.preview_service:
                _point_preview(kube, args, target, d["create_preview"])
                undo.service(args.preview_service, d["preview_from"] or active)
                ctx.emit(f"canary: preview {args.preview_service} -> {target} ({text})")
        if not d["promote"]:
            return {"image": d["image"]}
        if args.analysis is not None:
            failed = run_analysis(args.analysis, ctx.emit, ctx.remaining)
            if failed:
                raise ModuleError(f"pre-promotion analysis failed: {failed}; nothing switched", path=kube.host)
    except PlaybookError as exc:
        done = undo.restore()
        raise ModuleError(
            f"{exc.message}" + (f"; reverted: {', '.join(done)}" if done else ""), path=kube.host
        ) from None
    switched = ops.Undo(kube, args, ctx.run_id)
    previous_image = read_state(kube, args).env.get("image")
    switched.switched(active, previous_image)
    ops.switch(kube, args, target, ctx.run_id, image=d["image"])
    ctx.emit(f"canary: promoted {target} (was {active})")
    if args.analysis is not None and args.watch_seconds:
        failed = _watch(ctx, args)
        if failed:
            done = switched.restore()
            raise ModuleError(f"post-promotion check failed: {failed}; reverted: {', '.join(done)}", path=kube.host)
    ops.record_healthy(kube, args, name)
    if args.scale_down_delay is not None:
        _scale_down_later(ctx, kube, args, active, target)
    return {"selector": target, "image": d["image"]}


def _scale_down_later(ctx: Any, kube: Kube, args: Any, old: str, target: str) -> None:
    """Keep the old colour warm for `scale_down_delay` (Argo's scaleDownDelaySeconds), then scale
    it to 0, recording its replicas so the next deploy of that colour restores them."""
    name = args.deployment.format(colour=old)
    left = ctx.remaining()
    delay = float(args.scale_down_delay)
    if left is not None and left < delay + 30:
        ctx.emit(f"canary: {name} kept running: the step's timeout comes before scale_down_delay ends")
        return
    ctx.emit(f"canary: keeping {name} warm for {args.scale_down_delay}s")
    time.sleep(delay)
    if read_state(kube, args).selector != target:
        ctx.emit(f"canary: {name} kept running: the active colour changed meanwhile")
        return
    replicas = kube.read("deployment", name).spec.replicas
    if replicas:
        ops.scale(kube, args, name, 0, record=replicas)
        ctx.emit(f"canary: scaled {name} down (it had {replicas} replicas)")


def _watch(ctx: Any, args: Any) -> str | None:
    """Measure every `interval` until `watch_seconds` have passed; the first failure, or None."""
    analysis = args.analysis
    end = time.monotonic() + args.watch_seconds
    ctx.emit(f"canary: watching for {args.watch_seconds}s, a check every {analysis.interval:g}s")
    n = 0
    while time.monotonic() < end:
        left = ctx.remaining()
        if left is not None and left < analysis.interval:
            return f"the step's timeout comes before the watch window ends ({args.watch_seconds}s)"
        time.sleep(min(analysis.interval, max(0.0, end - time.monotonic())))
        n += 1
        failed = measure(analysis)
        if failed:
            return f"check {n} of the watch window: {failed}"
    ctx.emit(f"canary: {n} checks passed in the {args.watch_seconds}s watch window")
    return None
