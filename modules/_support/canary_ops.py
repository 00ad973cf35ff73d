"""The canary's writes, for `canary_switch.apply` only: the selector switch, a container's image,
the healthy record, the rollout watch, and `Undo`, the journal of what one step changed that
puts everything back when anything after it fails.

Every write carries the resourceVersion it was computed from; a 409 conflict is recomputed on a
fresh read (`retrying`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from engine.errors import ModuleError, PlaybookError
from modules._support.canary_state import (
    HEALTHY_ANNOTATION,
    SCALED_ANNOTATION,
    SWITCH_ANNOTATION,
    container,
    env_text,
    healthy_annotation,
    read_state,
    rollout_state,
    scaled_down,
    switch_mark,
)
from modules._support.kube import Conflict

__all__ = [
    "retrying",
    "switch",
    "point_service",
    "scale",
    "set_image",
    "record_healthy",
    "wait_rollout",
    "revert_switch",
    "Undo",
]

_CONFLICT_RETRIES = 5
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


def retrying(kube: Any, fn: Callable[[], None]) -> None:
    """Run `fn` (read, compute, patch with the read's resourceVersion) until no 409 answers."""
    for attempt in range(_CONFLICT_RETRIES):
        try:
            fn()
            return
        except Conflict:
            if attempt == _CONFLICT_RETRIES - 1:
                raise ModuleError(
                    f"still conflicting after {_CONFLICT_RETRIES} fresh reads: someone else keeps changing the canary",
                    path=kube.host,
                ) from None
            time.sleep(0.1 * (attempt + 1))


def switch(kube: Any, args: Any, to: str, run_id: str, image: str | None = None, service: str | None = None) -> None:
    """Point the ConfigMap and the Service at `to` (and the ConfigMap's `image` at `image` when
    given: a switch back restores the image it recorded)."""

    def configmap() -> None:
        state = read_state(kube, args)
        if state.selector == to and (image is None or state.env.get("image") == image):
            return
        env = {**state.env, "selector": to, **({"image": image} if image is not None else {})}
        mark = json.dumps(
            {"from": state.selector, "to": to, "run": run_id, "image": state.env.get("image")}, separators=(",", ":")
        )
        meta = {"resourceVersion": state.cm.metadata.resource_version, "annotations": {SWITCH_ANNOTATION: mark}}
        kube.patch("configmap", args.configmap, {"metadata": meta, "data": {args.configmap_key: env_text(env)}}, MERGE)

    retrying(kube, configmap)
    point_service(kube, service or args.service, args.selector_label, to)


def point_service(kube: Any, name: str, label: str, to: str) -> None:
    """Set the Service's selector `label` to `to`."""

    def patch() -> None:
        svc = kube.read("service", name)
        if (svc.spec.selector or {}).get(label) == to:
            return
        body = {"metadata": {"resourceVersion": svc.metadata.resource_version}, "spec": {"selector": {label: to}}}
        kube.patch("service", name, body, SMP)

    retrying(kube, patch)


def scale(kube: Any, args: Any, name: str, replicas: int, record: int | None = None) -> None:
    """Set the Deployment's replicas; the ConfigMap records `record` (the replicas it had) when
    scaling down, and forgets the Deployment when scaling it back up."""

    def deployment() -> None:
        dep = kube.read("deployment", name)
        if dep.spec.replicas == replicas:
            return
        body = {"metadata": {"resourceVersion": dep.metadata.resource_version}, "spec": {"replicas": replicas}}
        kube.patch("deployment", name, body, SMP)

    def configmap() -> None:
        state = read_state(kube, args)
        was = scaled_down(state.cm)
        now = {**was, name: record} if record else {k: v for k, v in was.items() if k != name}
        if now == was:
            return
        text = json.dumps(now, separators=(",", ":"), sort_keys=True)
        meta = {"resourceVersion": state.cm.metadata.resource_version, "annotations": {SCALED_ANNOTATION: text}}
        kube.patch("configmap", args.configmap, {"metadata": meta}, MERGE)

    retrying(kube, deployment)
    retrying(kube, configmap)


def set_image(
    kube: Any,
    args: Any,
    name: str,
    colour: str,
    image: str,
    *,
    record_current: bool = False,
    drop_current: bool = False,
) -> str | None:
    """Patch the container's image, then bring the ConfigMap along: its `image` when `colour`
    is active, and the healthy record (the replaced image added if it was rolled out, or
    dropped when reverting away from it). Returns the image replaced (None: nothing changed)."""
    replaced: list[tuple[str, bool]] = []

    def deployment() -> None:
        dep = kube.read("deployment", name)
        current = container(dep, args.container, kube.host).image
        if current == image:
            return
        body = {
            "metadata": {"resourceVersion": dep.metadata.resource_version},
            "spec": {"template": {"spec": {"containers": [{"name": args.container, "image": image}]}}},
        }
        kube.patch("deployment", name, body, SMP)
        replaced.append((current, rollout_state(dep)[0] is True))

    def configmap() -> None:
        state = read_state(kube, args)
        body: dict[str, Any] = {"metadata": {"resourceVersion": state.cm.metadata.resource_version}}
        if state.selector == colour and state.env.get("image") != image:
            body["data"] = {args.configmap_key: env_text({**state.env, "image": image})}
        if replaced:
            old, was_complete = replaced[0]
            if record_current and was_complete:
                body["metadata"]["annotations"] = {
                    HEALTHY_ANNOTATION: healthy_annotation(state.cm, name, args.container, add=old)
                }
            elif drop_current:
                body["metadata"]["annotations"] = {
                    HEALTHY_ANNOTATION: healthy_annotation(state.cm, name, args.container, drop=old)
                }
        if len(body) > 1 or "annotations" in body["metadata"]:
            kube.patch("configmap", args.configmap, body, MERGE)

    retrying(kube, deployment)
    retrying(kube, configmap)
    return replaced[0][0] if replaced else None


def record_healthy(kube: Any, args: Any, name: str) -> None:
    """Record the Deployment's current image as healthy, in the ConfigMap (an annotation on the
    Deployment itself would bump its generation and look like a new rollout)."""
    from modules._support.canary_state import healthy

    dep = kube.read("deployment", name)
    image = container(dep, args.container, kube.host).image

    def annotate() -> None:
        state = read_state(kube, args)
        if healthy(state.cm, name, args.container)[-1:] == [image]:
            return
        record = healthy_annotation(state.cm, name, args.container, add=image)
        meta = {"resourceVersion": state.cm.metadata.resource_version, "annotations": {HEALTHY_ANNOTATION: record}}
        kube.patch("configmap", args.configmap, {"metadata": meta}, MERGE)

    retrying(kube, annotate)


def wait_rollout(ctx: Any, kube: Any, name: str, timeout: float) -> tuple[bool, str]:
    """Watch the Deployment until its rollout completes, `timeout` passes, or the Deployment
    reports ProgressDeadlineExceeded (the rollout cannot complete: no point in waiting on)."""
    from kubernetes import watch

    deadline = time.monotonic() + timeout
    dep = kube.read("deployment", name)
    done, text = rollout_state(dep)
    rv = dep.metadata.resource_version
    while done is None:
        left = deadline - time.monotonic()
        step_left = ctx.remaining()
        if step_left is not None:
            left = min(left, step_left)
        if left <= 0:
            return False, text
        w = watch.Watch()
        try:
            with kube.call(f"watching deployment '{name}'"):
                for event in w.stream(
                    kube.apps.list_namespaced_deployment,
                    kube.namespace,
                    field_selector=f"metadata.name={name}",
                    resource_version=rv,
                    timeout_seconds=max(1, min(int(left), 60)),
                    _request_timeout=left + 10,
                ):
                    obj = event["object"]
                    if event["type"] == "ERROR" or not hasattr(obj, "metadata"):
                        break  # e.g. 410 Gone: read again below
                    rv = obj.metadata.resource_version
                    done, text = rollout_state(obj)
                    if done is not None or time.monotonic() >= deadline:
                        break
        except ModuleError as exc:
            if "410" not in str(exc) and "Expired" not in str(exc):
                raise
        finally:
            w.stop()
        if done is None:
            dep = kube.read("deployment", name)
            done, text = rollout_state(dep)
            rv = dep.metadata.resource_version
    return bool(done), text


def revert_switch(kube: Any, args: Any, colour: str, run_id: str) -> str | None:
    """Switch back if this run switched to `colour`; the colour switched back to, or None."""
    state = read_state(kube, args)
    mark = switch_mark(state.cm)
    if mark.get("run") != run_id or mark.get("to") != colour or state.selector != colour:
        return None
    back = mark.get("from")
    if not isinstance(back, str) or back not in args.colours:
        return None
    switch(kube, args, back, run_id, image=mark.get("image"))
    return back


class Undo:
    """What one step changed, in order; `restore` puts it back in reverse and says what it did.

    A failure while restoring does not stop the rest of the restore; it is reported with it."""

    def __init__(self, kube: Any, args: Any, run_id: str) -> None:
        self.kube, self.args, self.run_id = kube, args, run_id
        self.steps: list[tuple[str, Callable[[], None]]] = []

    def image(self, name: str, colour: str, previous: str) -> None:
        def put_back() -> None:
            set_image(self.kube, self.args, name, colour, previous)

        self.steps.append((f"image back to {previous}", put_back))

    def switched(self, back: str, image: str | None) -> None:
        self.steps.append(
            (f"selector back to {back}", lambda: switch(self.kube, self.args, back, self.run_id, image=image))
        )

    def service(self, name: str, back: str) -> None:
        label = self.args.selector_label
        self.steps.append((f"service {name} back to {back}", lambda: point_service(self.kube, name, label, back)))

    def restore(self) -> list[str]:
        done: list[str] = []
        for what, fn in reversed(self.steps):
            try:
                fn()
                done.append(what)
            except PlaybookError as exc:
                done.append(f"{what} FAILED: {exc}")
        self.steps.clear()
        return done
