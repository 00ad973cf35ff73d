"""`canary_switch`: the platform team's blue/green canary runbook on Kubernetes.

State lives in the cluster, as the runbook has it: a ConfigMap (`canary-env`, key `canaryEnv`)
holds `{"selector": "blue"|"green", "image": ...}`; a Service selects the active colour's pods
by label; each colour has a Deployment (`blue-deployment`, `green-deployment`).

Actions:
- `switch`: point the Service selector and the ConfigMap at the other colour (or `to`).
- `set_image`: strategic-merge patch of one named container of a colour's Deployment to an image
  pinned by digest (other containers, ports and env untouched), then wait for the rollout. When
  the rollout fails or times out, the previous image is restored, and so is the selector if this
  run switched it.
- `wait`: wait for a rollout (observedGeneration >= generation, updated == available ==
  replicas); on failure, revert to the last healthy image (and the selector, as above).
- `revert`: set the image back to a healthy digest (`image`, or the last one recorded).

Healthy images are recorded in the cluster (annotation `playbook.dev/healthy-images` on the
ConfigMap, per Deployment and container) when a rollout completes, so any controller can revert. Every write carries the resourceVersion it was
computed from; a 409 conflict is retried after a fresh read. All kubernetes client errors are
translated at the client boundary (modules/_support/kube.py); none escapes.

Over 400 lines as one idea: the runbook's actions share one read of the cluster state and one revert
path; the client boundary is modules/_support/kube.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from engine.errors import ArgError, ModuleError
from engine.model.results import Diff, Plan
from engine.module import ApplyContext, PlanContext, arg, register
from modules._support.kube import Conflict, Kube, KubeReader

__all__ = ["CanarySwitch", "CanaryArgs", "rollout_state", "HEALTHY_ANNOTATION", "SWITCH_ANNOTATION"]

HEALTHY_ANNOTATION = "playbook.dev/healthy-images"
SWITCH_ANNOTATION = "playbook.dev/last-switch"
KEEP_HEALTHY = 10
_DIGEST_REF = re.compile(r"[^\s@]+@sha256:[0-9a-f]{64}")
_CONFLICT_RETRIES = 5
_SMP = "application/strategic-merge-patch+json"
_MERGE = "application/merge-patch+json"


@dataclass(frozen=True)
class CanaryArgs:
    action: Literal["switch", "set_image", "wait", "revert"] = arg(
        doc="`switch` the active colour, `set_image` on a colour's Deployment, `wait` for its rollout, or `revert` it to a healthy digest."
    )
    to: str | None = arg(None, doc="`switch`: the colour to make active (default: the other one).")
    colour: str | None = arg(
        None, doc="`set_image`/`wait`/`revert`: whose Deployment (default: the active colour in the ConfigMap)."
    )
    image: str | None = arg(
        None,
        doc="`set_image`: the image by digest, `repo@sha256:<hex>`. `revert`: the healthy image to go back to (unset or empty: the last one recorded healthy that is not the current one).",
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
    timeout_seconds: int = arg(300, doc="How long a rollout may take before it counts as failed.")
    revert_on_failure: bool = arg(
        True,
        doc="Restore the previous image (and the selector, if this run switched it) when the rollout fails or times out.",
    )


# -- reading the canary ----------------------------------------------------------------------------


@dataclass
class _State:
    cm: Any
    env: dict[str, Any]
    svc: Any

    @property
    def selector(self) -> str:
        return str(self.env.get("selector", ""))


def _read_state(kube: KubeReader, args: CanaryArgs) -> _State:
    cm = kube.read("configmap", args.configmap)
    raw = (cm.data or {}).get(args.configmap_key)
    if raw is None:
        raise ModuleError(f"configmap '{args.configmap}' has no key '{args.configmap_key}'", path=kube.host)
    try:
        env = json.loads(raw)
    except ValueError as exc:
        raise ModuleError(
            f"configmap '{args.configmap}' key '{args.configmap_key}' must be JSON (got {raw[:80]!r}: {exc})",
            path=kube.host,
        ) from None
    if not isinstance(env, dict) or env.get("selector") not in args.colours:
        raise ModuleError(
            f"configmap '{args.configmap}' '{args.configmap_key}'.selector must be one of "
            f"{', '.join(args.colours)} (got {raw[:120]!r})",
            path=kube.host,
        )
    svc = kube.read("service", args.service)
    return _State(cm, env, svc)


def _env_text(env: dict[str, Any]) -> str:
    return json.dumps(env, separators=(",", ":"))


def _container(dep: Any, name: str, host: str) -> Any:
    for c in dep.spec.template.spec.containers:
        if c.name == name:
            return c
    names = ", ".join(c.name for c in dep.spec.template.spec.containers)
    raise ModuleError(f"deployment '{dep.metadata.name}' has no container '{name}' (has: {names})", path=host)


def _healthy_record(cm: Any) -> dict[str, Any]:
    try:
        record = json.loads((cm.metadata.annotations or {}).get(HEALTHY_ANNOTATION, "{}"))
    except (ValueError, AttributeError):
        return {}
    return record if isinstance(record, dict) else {}


def _healthy(cm: Any, deployment: str, container: str) -> list[str]:
    """Images recorded healthy for `deployment`'s `container`, oldest first."""
    images = (_healthy_record(cm).get(deployment) or {}).get(container) or []
    return [str(i) for i in images] if isinstance(images, list) else []


def _healthy_annotation(
    cm: Any, deployment: str, container: str, add: str | None = None, drop: str | None = None
) -> str:
    record = _healthy_record(cm)
    recorded = record.get(deployment)
    per_dep = recorded if isinstance(recorded, dict) else {}
    images = [i for i in _healthy(cm, deployment, container) if i not in (add, drop)]
    if add:
        images.append(add)
    record[deployment] = {**per_dep, container: images[-KEEP_HEALTHY:]}
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def rollout_state(dep: Any) -> tuple[bool, str]:
    """(complete, description) of a Deployment's rollout, as `kubectl rollout status` judges it."""
    s, want = dep.status, dep.spec.replicas if dep.spec.replicas is not None else 1
    gen, seen = dep.metadata.generation or 0, (s.observed_generation or 0) if s else 0
    updated, available, total = (
        (s.updated_replicas or 0, s.available_replicas or 0, s.replicas or 0) if s else (0, 0, 0)
    )
    text = f"generation {seen}/{gen}, {updated} updated, {available} available, {total} total of {want}"
    for cond in (s.conditions or []) if s else []:
        if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
            return False, text + " (progress deadline exceeded)"
    return seen >= gen and updated == available == total == want, text


def _fingerprint(state: _State | None, dep: Any = None) -> dict[str, str]:
    fp: dict[str, str] = {}
    if state is not None:
        fp["configmap"] = state.cm.metadata.resource_version
        fp["service"] = state.svc.metadata.resource_version
    if dep is not None:
        fp["deployment"] = dep.metadata.resource_version
    return fp


# -- the module ------------------------------------------------------------------------------------


@register
class CanarySwitch:
    """Blue/green canary on a Kubernetes target: switch the active colour, set a colour's image by
    digest, wait for the rollout and revert image and selector when it fails, or revert to a
    recorded healthy digest. The dry run shows the ConfigMap, Service and Deployment changes."""

    name: ClassVar[str] = "canary_switch"
    Args: ClassVar[type] = CanaryArgs
    summary: ClassVar[str] = "blue/green canary on Kubernetes: switch selector, set image by digest, wait, revert"
    outputs: ClassVar[dict[str, str]] = {
        "selector": "the active colour after the step",
        "colour": "the colour whose Deployment the step acts on",
        "deployment": "that Deployment's name",
        "image": "the container's image after the step",
        "previous_image": "the container's image before the step",
    }
    controller_only: ClassVar[bool] = False
    examples: ClassVar[str] = """\
- id: green_image
  module: canary_switch
  fleet: shop
  args:
    action: set_image
    colour: green
    image: registry.example.com/shop/web:1.4.2
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
        if args.image == "":
            args = dataclasses.replace(args, image=None)  # an unset playbook var renders as ""
        kube = KubeReader(ctx)  # plan reads only: a reader has no patch, its transport sends GET only
        try:
            state = _read_state(kube, args)
            if args.action == "switch":
                return self._plan_switch(kube, args, state, where)
            return self._plan_image(kube, args, state, where)
        finally:
            kube.close()

    def _plan_switch(self, kube: KubeReader, args: CanaryArgs, state: _State, where: str) -> Plan:
        current = state.selector
        to = args.to or next(c for c in args.colours if c != current)
        if to not in args.colours:
            raise ArgError(f"'to' must be one of {', '.join(args.colours)} (got {to!r})", path=where)
        dep = kube.read("deployment", args.deployment.format(colour=to))  # never switch to nothing
        svc_sel = dict(state.svc.spec.selector or {})
        outputs = {
            "selector": to,
            "colour": to,
            "deployment": dep.metadata.name,
            "image": state.env.get("image", ""),
            "previous_image": state.env.get("image", ""),
        }
        fp = _fingerprint(state)
        if current == to and svc_sel.get(args.selector_label) == to:
            return Plan.no_change(f"'{to}' is already active", outputs=outputs, fingerprint=fp)
        diffs = []
        if current != to:
            diffs.append(
                Diff(
                    header=f"configmap/{args.configmap} data.{args.configmap_key} ({kube.namespace})",
                    before=_env_text(state.env) + "\n",
                    after=_env_text({**state.env, "selector": to}) + "\n",
                )
            )
        if svc_sel.get(args.selector_label) != to:
            diffs.append(
                Diff(
                    header=f"service/{args.service} spec.selector ({kube.namespace})",
                    before="".join(f"{k}: {v}\n" for k, v in svc_sel.items()),
                    after="".join(f"{k}: {v}\n" for k, v in {**svc_sel, args.selector_label: to}.items()),
                )
            )
        complete, text = rollout_state(dep)
        reason = f"switch {current} -> {to}" + (
            "" if complete else f" (warning: {dep.metadata.name} is not rolled out: {text})"
        )
        return Plan.will_change(
            reason, diffs=tuple(diffs), outputs=outputs, fingerprint=fp, data={"args": args, "from": current, "to": to}
        )

    def _plan_image(self, kube: KubeReader, args: CanaryArgs, state: _State, where: str) -> Plan:
        colour = args.colour or state.selector
        if colour not in args.colours:
            raise ArgError(f"'colour' must be one of {', '.join(args.colours)} (got {colour!r})", path=where)
        dep = kube.read("deployment", args.deployment.format(colour=colour))
        current = _container(dep, args.container, kube.host).image
        complete, text = rollout_state(dep)
        fp = _fingerprint(state, dep)
        base = {
            "selector": state.selector,
            "colour": colour,
            "deployment": dep.metadata.name,
            "previous_image": current,
        }
        if args.action == "wait":
            outputs = {**base, "image": current}
            if complete:
                return Plan.no_change(f"{dep.metadata.name} is rolled out ({text})", outputs=outputs, fingerprint=fp)
            return Plan.will_change(
                f"wait for {dep.metadata.name} to roll out ({text})",
                outputs=outputs,
                fingerprint=fp,
                data={
                    "args": args,
                    "colour": colour,
                    "deployment": dep.metadata.name,
                    "image": current,
                    "previous": None,
                },
            )
        if args.action == "set_image":
            if not args.image or not _DIGEST_REF.fullmatch(args.image):
                raise ArgError(
                    f"'image' must be pinned by digest, repo@sha256:<64 hex> (got {args.image!r})", path=where
                )
            image = args.image
            why = f"set {dep.metadata.name} container '{args.container}' to {image}"
        else:  # revert
            if args.image:
                if not _DIGEST_REF.fullmatch(args.image):
                    raise ArgError(
                        f"'image' must be pinned by digest, repo@sha256:<64 hex> (got {args.image!r})", path=where
                    )
                image = args.image
            else:
                healthy = [i for i in _healthy(state.cm, dep.metadata.name, args.container) if i != current]
                if not healthy:
                    raise ModuleError(
                        f"no healthy image recorded for {dep.metadata.name} container '{args.container}' "
                        "other than the current one: give 'image'",
                        path=kube.host,
                    )
                image = healthy[-1]
            why = f"revert {dep.metadata.name} container '{args.container}' to healthy {image}"
        outputs = {**base, "image": image}
        active = colour == state.selector
        cm_stale = active and state.env.get("image") != image
        if current == image and not cm_stale:
            return Plan.no_change(
                f"{dep.metadata.name} container '{args.container}' already runs {image}",
                outputs=outputs,
                fingerprint=fp,
            )
        diffs = []
        if current != image:
            diffs.append(
                Diff(
                    header=f"deployment/{dep.metadata.name} container {args.container} ({kube.namespace})",
                    before=f"image: {current}\n",
                    after=f"image: {image}\n",
                )
            )
        if cm_stale:
            diffs.append(
                Diff(
                    header=f"configmap/{args.configmap} data.{args.configmap_key} ({kube.namespace})",
                    before=_env_text(state.env) + "\n",
                    after=_env_text({**state.env, "image": image}) + "\n",
                )
            )
        return Plan.will_change(
            why,
            diffs=tuple(diffs),
            outputs=outputs,
            fingerprint=fp,
            data={
                "args": args,
                "colour": colour,
                "deployment": dep.metadata.name,
                "image": image,
                "previous": current,
                "was_complete": complete,
            },
        )

    # -- applying --------------------------------------------------------------------------------

    def apply(self, ctx: ApplyContext, plan: Plan) -> dict[str, Any]:
        d = plan.data
        args: CanaryArgs = d["args"]
        kube = Kube(ctx)
        try:
            if args.action == "switch":
                self._switch(kube, args, d["to"], ctx.run_id)
                ctx.emit(f"canary: switched {d['from']} -> {d['to']}")
                return {"selector": d["to"]}
            if args.action == "wait":
                self._wait_or_revert(ctx, kube, args, d["colour"], d["deployment"], previous=None)
                return {}
            self._set_image(
                kube,
                args,
                d["deployment"],
                d["colour"],
                d["image"],
                record_current=bool(d.get("was_complete")) and args.action == "set_image",
                drop_current=args.action == "revert",
            )
            ctx.emit(f"canary: {d['deployment']} container '{args.container}' -> {d['image']}")
            if args.wait:
                self._wait_or_revert(ctx, kube, args, d["colour"], d["deployment"], previous=d["previous"])
            return {"image": d["image"]}
        finally:
            kube.close()

    def _retrying(self, kube: Kube, fn: Callable[[], None]) -> None:
        for attempt in range(_CONFLICT_RETRIES):
            try:
                fn()
                return
            except Conflict:
                if attempt == _CONFLICT_RETRIES - 1:
                    raise ModuleError(
                        f"still conflicting after {_CONFLICT_RETRIES} fresh reads: someone else keeps "
                        "changing the canary",
                        path=kube.host,
                    ) from None
                time.sleep(0.1 * (attempt + 1))

    def _switch(self, kube: Kube, args: CanaryArgs, to: str, run_id: str, image: str | None = None) -> None:
        """Point the ConfigMap and the Service at `to` (restoring the ConfigMap's `image` too when
        given: switching back after a failed rollout)."""

        def configmap() -> None:
            state = _read_state(kube, args)
            if state.selector == to and (image is None or state.env.get("image") == image):
                return
            env = {**state.env, "selector": to, **({"image": image} if image is not None else {})}
            mark = json.dumps(
                {"from": state.selector, "to": to, "run": run_id, "image": state.env.get("image")},
                separators=(",", ":"),
            )
            kube.patch(
                "configmap",
                args.configmap,
                {
                    "metadata": {
                        "resourceVersion": state.cm.metadata.resource_version,
                        "annotations": {SWITCH_ANNOTATION: mark},
                    },
                    "data": {args.configmap_key: _env_text(env)},
                },
                _MERGE,
            )

        def service() -> None:
            svc = kube.read("service", args.service)
            if (svc.spec.selector or {}).get(args.selector_label) == to:
                return
            kube.patch(
                "service",
                args.service,
                {
                    "metadata": {"resourceVersion": svc.metadata.resource_version},
                    "spec": {"selector": {args.selector_label: to}},
                },
                _SMP,
            )

        self._retrying(kube, configmap)
        self._retrying(kube, service)

    def _set_image(
        self,
        kube: Kube,
        args: CanaryArgs,
        name: str,
        colour: str,
        image: str,
        *,
        record_current: bool = False,
        drop_current: bool = False,
    ) -> None:
        """Patch the container's image, then bring the ConfigMap along: its `image` when `colour`
        is active, and the healthy record (the replaced image added if it was rolled out, or
        dropped when reverting away from it)."""
        replaced: list[tuple[str, bool]] = []

        def deployment() -> None:
            dep = kube.read("deployment", name)
            current = _container(dep, args.container, kube.host).image
            if current == image:
                return
            kube.patch(
                "deployment",
                name,
                {
                    "metadata": {"resourceVersion": dep.metadata.resource_version},
                    "spec": {"template": {"spec": {"containers": [{"name": args.container, "image": image}]}}},
                },
                _SMP,
            )
            replaced.append((current, rollout_state(dep)[0]))

        def configmap() -> None:
            state = _read_state(kube, args)
            body: dict[str, Any] = {"metadata": {"resourceVersion": state.cm.metadata.resource_version}}
            if state.selector == colour and state.env.get("image") != image:
                body["data"] = {args.configmap_key: _env_text({**state.env, "image": image})}
            if replaced:
                old, was_complete = replaced[0]
                if record_current and was_complete:
                    body["metadata"]["annotations"] = {
                        HEALTHY_ANNOTATION: _healthy_annotation(state.cm, name, args.container, add=old)
                    }
                elif drop_current:
                    body["metadata"]["annotations"] = {
                        HEALTHY_ANNOTATION: _healthy_annotation(state.cm, name, args.container, drop=old)
                    }
            if len(body) > 1 or "annotations" in body["metadata"]:
                kube.patch("configmap", args.configmap, body, _MERGE)

        self._retrying(kube, deployment)
        self._retrying(kube, configmap)

    def _record_healthy(self, kube: Kube, args: CanaryArgs, name: str) -> None:
        """Record the Deployment's current image as healthy, in the ConfigMap (an annotation on the
        Deployment itself would bump its generation and look like a new rollout)."""
        dep = kube.read("deployment", name)
        image = _container(dep, args.container, kube.host).image

        def annotate() -> None:
            state = _read_state(kube, args)
            if _healthy(state.cm, name, args.container)[-1:] == [image]:
                return
            kube.patch(
                "configmap",
                args.configmap,
                {
                    "metadata": {
                        "resourceVersion": state.cm.metadata.resource_version,
                        "annotations": {
                            HEALTHY_ANNOTATION: _healthy_annotation(state.cm, name, args.container, add=image)
                        },
                    }
                },
                _MERGE,
            )

        self._retrying(kube, annotate)

    def _wait(self, ctx: ApplyContext, kube: Kube, name: str, timeout: float) -> tuple[bool, str]:
        """Watch the Deployment until its rollout completes or `timeout` passes."""
        from kubernetes import watch

        deadline = time.monotonic() + timeout
        dep = kube.read("deployment", name)
        done, text = rollout_state(dep)
        rv = dep.metadata.resource_version
        while not done:
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
                        if done or time.monotonic() >= deadline:
                            break
            except ModuleError as exc:
                if "410" not in str(exc) and "Expired" not in str(exc):
                    raise
            finally:
                w.stop()
            if not done:
                dep = kube.read("deployment", name)
                done, text = rollout_state(dep)
                rv = dep.metadata.resource_version
        return True, text

    def _wait_or_revert(
        self, ctx: ApplyContext, kube: Kube, args: CanaryArgs, colour: str, name: str, previous: str | None
    ) -> None:
        ctx.emit(f"canary: waiting up to {args.timeout_seconds}s for {name} to roll out")
        ok, text = self._wait(ctx, kube, name, args.timeout_seconds)
        if ok:
            self._record_healthy(kube, args, name)
            ctx.emit(f"canary: {name} rolled out ({text})")
            return
        failure = f"rollout of {name} did not complete within {args.timeout_seconds}s ({text})"
        if not args.revert_on_failure:
            raise ModuleError(failure, path=kube.host)
        dep = kube.read("deployment", name)
        current = _container(dep, args.container, kube.host).image
        target = previous
        if target is None:
            healthy = [i for i in _healthy(_read_state(kube, args).cm, name, args.container) if i != current]
            target = healthy[-1] if healthy else None
        done: list[str] = []
        if target and target != current:
            self._set_image(kube, args, name, colour, target)
            done.append(f"image back to {target}")
        switched_back = self._revert_switch(kube, args, colour, ctx.run_id)
        if switched_back:
            done.append(f"selector back to {switched_back}")
        if target and target != current:
            ok, text = self._wait(ctx, kube, name, args.timeout_seconds)
            done.append("rolled back" if ok else f"rollback not complete yet ({text})")
        raise ModuleError(
            f"{failure}; reverted: {', '.join(done) if done else 'nothing recorded to revert to'}", path=kube.host
        )

    def _revert_switch(self, kube: Kube, args: CanaryArgs, colour: str, run_id: str) -> str | None:
        """Switch back if this run switched to `colour`; the colour switched back to, or None."""
        state = _read_state(kube, args)
        try:
            mark = json.loads((state.cm.metadata.annotations or {}).get(SWITCH_ANNOTATION, "{}"))
        except ValueError:
            return None
        if mark.get("run") != run_id or mark.get("to") != colour or state.selector != colour:
            return None
        back = mark.get("from")
        if back not in args.colours:
            return None
        self._switch(kube, args, back, run_id, image=mark.get("image"))
        return back
