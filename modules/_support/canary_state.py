"""The canary's state as the cluster holds it, read-only: the `canaryEnv` ConfigMap (selector,
image, the healthy-image record and the last-switch mark), the Services and a Deployment's
rollout. `canary_switch` plans from these values; modules/_support/canary_ops.py writes them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from engine.errors import ArgError, ModuleError
from engine.model import jsonable

__all__ = [
    "HEALTHY_ANNOTATION",
    "SWITCH_ANNOTATION",
    "SCALED_ANNOTATION",
    "scaled_down",
    "KEEP_HEALTHY",
    "DIGEST_REF",
    "CanaryConfig",
    "State",
    "read_state",
    "env_text",
    "container",
    "healthy",
    "healthy_annotation",
    "rollout_state",
    "fingerprint",
    "switch_mark",
    "require_digest",
]

HEALTHY_ANNOTATION = "playbook.dev/healthy-images"
SWITCH_ANNOTATION = "playbook.dev/last-switch"
SCALED_ANNOTATION = "playbook.dev/scaled-down"
KEEP_HEALTHY = 10
DIGEST_REF = re.compile(r"[^\s@]+@sha256:[0-9a-f]{64}")


class CanaryConfig(Protocol):
    """The arguments that name the canary's objects (CanaryArgs has them all)."""

    @property
    def configmap(self) -> str: ...
    @property
    def configmap_key(self) -> str: ...
    @property
    def service(self) -> str: ...
    @property
    def colours(self) -> tuple[str, ...]: ...


@dataclass
class State:
    """One read of the ConfigMap and the active Service."""

    cm: Any
    env: dict[str, Any]
    svc: Any

    @property
    def selector(self) -> str:
        return str(self.env.get("selector", ""))


def read_state(kube: Any, args: CanaryConfig) -> State:
    """Read the ConfigMap and the Service; a ConfigMap that does not hold the canary is an error."""
    cm = kube.read("configmap", args.configmap)
    raw = (cm.data or {}).get(args.configmap_key)
    if raw is None:
        raise ModuleError(f"configmap '{args.configmap}' has no key '{args.configmap_key}'", path=kube.host)
    try:
        env = jsonable.loads(raw)
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
    return State(cm, env, svc)


def env_text(env: dict[str, Any]) -> str:
    return json.dumps(env, separators=(",", ":"))


def container(dep: Any, name: str, where: str) -> Any:
    """The Deployment's container `name`; a name it lacks is an argument error (certain, whatever
    runs before it), listing the names it has."""
    for c in dep.spec.template.spec.containers:
        if c.name == name:
            return c
    names = ", ".join(c.name for c in dep.spec.template.spec.containers)
    raise ArgError(f"deployment '{dep.metadata.name}' has no container '{name}' (has: {names})", path=where)


def require_digest(image: str | None, where: str) -> str:
    if not image or not DIGEST_REF.fullmatch(image):
        raise ArgError(f"'image' must be pinned by digest, repo@sha256:<64 hex> (got {image!r})", path=where)
    return image


def _healthy_record(cm: Any) -> dict[str, Any]:
    try:
        record = jsonable.loads((cm.metadata.annotations or {}).get(HEALTHY_ANNOTATION, "{}"))
    except (ValueError, AttributeError):
        return {}
    return record if isinstance(record, dict) else {}


def healthy(cm: Any, deployment: str, name: str) -> list[str]:
    """Images recorded healthy for `deployment`'s container `name`, oldest first."""
    images = (_healthy_record(cm).get(deployment) or {}).get(name) or []
    return [str(i) for i in images] if isinstance(images, list) else []


def healthy_annotation(cm: Any, deployment: str, name: str, add: str | None = None, drop: str | None = None) -> str:
    """The healthy record with `add` appended (last KEEP_HEALTHY kept) or `drop` removed."""
    record = _healthy_record(cm)
    recorded = record.get(deployment)
    per_dep = recorded if isinstance(recorded, dict) else {}
    images = [i for i in healthy(cm, deployment, name) if i not in (add, drop)]
    if add:
        images.append(add)
    record[deployment] = {**per_dep, name: images[-KEEP_HEALTHY:]}
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def switch_mark(cm: Any) -> dict[str, Any]:
    """The last switch as recorded on the ConfigMap: from, to, run, image (empty if none)."""
    try:
        mark = jsonable.loads((cm.metadata.annotations or {}).get(SWITCH_ANNOTATION, "{}"))
    except (ValueError, AttributeError):
        return {}
    return mark if isinstance(mark, dict) else {}


def scaled_down(cm: Any) -> dict[str, int]:
    """Deployments this module scaled to 0 after a promotion, with the replicas they had."""
    try:
        record = jsonable.loads((cm.metadata.annotations or {}).get(SCALED_ANNOTATION, "{}"))
    except (ValueError, AttributeError):
        return {}
    if not isinstance(record, dict):
        return {}
    return {str(k): v for k, v in record.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0}


def rollout_state(dep: Any) -> tuple[bool | None, str]:
    """(complete, description) of a Deployment's rollout, as `kubectl rollout status` judges it:
    True when complete, None while in progress, False when it can no longer complete (the
    Deployment reports ProgressDeadlineExceeded for its current generation)."""
    s, want = dep.status, dep.spec.replicas if dep.spec.replicas is not None else 1
    gen, seen = dep.metadata.generation or 0, (s.observed_generation or 0) if s else 0
    updated, available, total = (
        (s.updated_replicas or 0, s.available_replicas or 0, s.replicas or 0) if s else (0, 0, 0)
    )
    text = f"generation {seen}/{gen}, {updated} updated, {available} available, {total} total of {want}"
    if seen >= gen:
        for cond in (s.conditions or []) if s else []:
            if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
                return False, text + " (progress deadline exceeded)"
    if seen >= gen and updated == available == total == want:
        return True, text
    return None, text


def fingerprint(state: State | None, dep: Any = None) -> dict[str, str]:
    fp: dict[str, str] = {}
    if state is not None:
        fp["configmap"] = state.cm.metadata.resource_version
        fp["service"] = state.svc.metadata.resource_version
    if dep is not None:
        fp["deployment"] = dep.metadata.resource_version
    return fp
