"""The Kubernetes API client boundary for modules that talk to a cluster (`canary_switch`):
one client per target from its kubeconfig and context, credentials registered with the
scrubber before anything can echo them, and every client-library error translated to ours
(`KubeReader.call`), so no `kubernetes.*` or `urllib3.*` exception leaves a module.

`plan` builds a `KubeReader` (get, find, list, watch, and `can_i`); `apply` alone can build a
`Kube`, which adds `patch`, `create` and the raw APIs. Both gate the client's HTTP transport, so
the read-only promise holds for any call a module makes, not only for the methods listed here
(engine/module.py). The one POST a reader sends is `can_i`'s SelfSubjectAccessReview: a question
the API server answers and stores nothing for, so a dry run can say "not allowed" before the
run does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from engine.errors import ConnectionFailed, ModuleError, ReadOnlyViolation
from engine.model import jsonable
from engine.module import ApplyContext, PlanContext, require_apply
from engine.secrets import SCRUBBER

__all__ = ["KubeReader", "Kube", "Conflict", "Forbidden", "api_message", "register_kubeconfig_secrets"]


def api_message(exc: Any) -> str:
    try:
        body = jsonable.loads(exc.body or "{}")
        return body.get("message") or exc.reason or str(exc.status)
    except (TypeError, ValueError):
        return str(exc.reason or exc.status)


_SAFE_VERBS = frozenset({"GET", "HEAD", "OPTIONS"})
_ACCESS_REVIEW = "apis/authorization.k8s.io/v1/selfsubjectaccessreviews"  # a question: creates nothing
_READS = {
    "configmap": ("core", "read_namespaced_config_map", "list_namespaced_config_map"),
    "service": ("core", "read_namespaced_service", "list_namespaced_service"),
    "deployment": ("apps", "read_namespaced_deployment", "list_namespaced_deployment"),
    "replicaset": ("apps", "read_namespaced_replica_set", "list_namespaced_replica_set"),
    "pod": ("core", "read_namespaced_pod", "list_namespaced_pod"),
}


class _Verbs:
    """The client's HTTP transport with a gate in front: GET, HEAD and OPTIONS pass, and so does
    a POST of a SelfSubjectAccessReview (`can_i`); any other verb is refused for a reader, and
    for a writer while a plan runs (`require_apply`). This is where every request of the
    kubernetes client goes, raw API calls included."""

    def __init__(self, inner: Any, ctx: Any, *, writable: bool) -> None:
        self._inner = inner
        self._ctx = ctx
        self._writable = writable

    def request(self, method: str, url: str, *args: Any, **kw: Any) -> Any:
        verb = method.upper()
        path = url.split("://", 1)[-1].partition("/")[2].partition("?")[0]
        if verb not in _SAFE_VERBS and not (verb == "POST" and path.rstrip("/") == _ACCESS_REVIEW):
            if not self._writable:
                raise ReadOnlyViolation(
                    f"KubeReader refused {verb} /{path}: a reader sends GET only", path=getattr(self._ctx, "step", "")
                )
            require_apply(self._ctx, f"Kubernetes {verb} /{path}")
        return self._inner.request(method, url, *args, **kw)

    def close(self) -> None:
        self._inner.close()


class KubeReader:
    """get, list and watch on one target's API server (kubeconfig and context from the target),
    and `can_i`, with every error translated to ours. No write method; its transport refuses any
    verb but GET (and `can_i`'s access review), so a module's `plan` cannot change the cluster
    even through a raw API call."""

    _writable = False

    def __init__(self, ctx: PlanContext | ApplyContext) -> None:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        target, step = ctx.target, ctx.step
        if target is None or getattr(target, "connection", None) != "kubernetes":
            raise ModuleError(
                "canary_switch runs on Kubernetes targets (inventory hosts with 'connection: kubernetes')", path=step
            )
        self.host = target.name
        self.step = step
        path = target.kubeconfig
        try:
            register_kubeconfig_secrets(path, target.context)
            self._api = config.new_client_from_config(config_file=path, context=target.context, persist_config=False)
            contexts, active = config.list_kube_config_contexts(config_file=path)
        except ConfigException as exc:
            raise ModuleError(f"kubeconfig {path or '(default)'}: {exc}", path=target.name) from None
        except OSError as exc:
            raise ModuleError(
                f"kubeconfig {path or '(default)'} unreadable: {exc.strerror}", path=target.name
            ) from None
        self._api.rest_client = _Verbs(self._api.rest_client, ctx, writable=self._writable)
        conf = self._api.configuration
        auth = conf.api_key.get("authorization") or conf.api_key.get("BearerToken")
        if auth:
            SCRUBBER.add(auth.split(" ", 1)[-1])
        self._api.configuration.retries = 1
        chosen = next((c for c in contexts if c["name"] == target.context), active) if target.context else active
        self.namespace = target.namespace or (chosen or {}).get("context", {}).get("namespace") or "default"
        self._core = client.CoreV1Api(self._api)
        self._apps = client.AppsV1Api(self._api)

    def close(self) -> None:
        self._api.close()

    @contextmanager
    def call(self, what: str) -> Iterator[None]:
        import urllib3.exceptions
        from kubernetes.client.exceptions import ApiException

        try:
            yield
        except ApiException as exc:
            msg = SCRUBBER.scrub(api_message(exc))
            if exc.status == 404:
                raise ModuleError(f"{what} not found in namespace '{self.namespace}'", path=self.host) from None
            if exc.status == 409:
                raise Conflict(f"{what}: {msg}") from None
            if exc.status in (401, 403):
                raise Forbidden(f"{what}: not allowed ({exc.status}): {msg}", path=self.host) from None
            raise ModuleError(f"{what}: API error {exc.status}: {msg}", path=self.host) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ConnectionFailed(
                f"Kubernetes API unreachable ({what}): {SCRUBBER.scrub(str(exc))[:300]}", host=self.host
            ) from None

    def _fn(self, kind: str, which: int) -> Any:
        api, *names = _READS[kind]
        return getattr(self._core if api == "core" else self._apps, names[which])

    def read(self, kind: str, name: str) -> Any:
        """One object (`configmap`, `service`, `deployment`, `replicaset`, `pod`) by name."""
        with self.call(f"{kind} '{name}'"):
            return self._fn(kind, 0)(name, self.namespace, _request_timeout=30)

    def find(self, kind: str, name: str) -> Any:
        """Like `read`, but None when the object does not exist."""
        from kubernetes.client.exceptions import ApiException

        with self.call(f"{kind} '{name}'"):
            try:
                return self._fn(kind, 0)(name, self.namespace, _request_timeout=30)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    def can_i(self, verb: str, kind: str, name: str | None = None) -> bool:
        """Whether these credentials may `verb` the `kind` in the namespace (a
        SelfSubjectAccessReview, which every authenticated user may ask; it changes nothing, so a
        reader may send it)."""
        from kubernetes import client

        group, resource = _RESOURCES[kind]
        attrs = {"namespace": self.namespace, "verb": verb, "group": group, "resource": resource}
        if name:
            attrs["name"] = name
        review: Any = {"spec": {"resourceAttributes": attrs}}
        with self.call(f"asking whether {verb} {resource} is allowed"):
            answer = client.AuthorizationV1Api(self._api).create_self_subject_access_review(review, _request_timeout=30)
        return bool(answer.status and answer.status.allowed)

    def list(self, kind: str, *, label_selector: str | None = None, field_selector: str | None = None) -> Any:
        """The objects of `kind` in the namespace (a `...List` with `items`)."""
        kw = {k: v for k, v in (("label_selector", label_selector), ("field_selector", field_selector)) if v}
        with self.call(f"listing {kind}s"):
            return self._fn(kind, 1)(self.namespace, _request_timeout=30, **kw)

    def watch(
        self, kind: str, *, field_selector: str | None = None, resource_version: str | None = None, timeout: int = 60
    ) -> Iterator[dict[str, Any]]:
        """Watch events (`{"type": ..., "object": ...}`) of `kind` for up to `timeout` seconds."""
        from kubernetes import watch

        w = watch.Watch()
        kw: dict[str, Any] = {"timeout_seconds": max(1, timeout), "_request_timeout": timeout + 10}
        if field_selector:
            kw["field_selector"] = field_selector
        if resource_version:
            kw["resource_version"] = resource_version
        try:
            with self.call(f"watching {kind}s"):
                yield from w.stream(self._fn(kind, 1), self.namespace, **kw)
        finally:
            w.stop()


class Kube(KubeReader):
    """The writing client, for `apply` only: it must be handed the step's `ApplyContext`, and
    refuses to be built, or to send anything but a GET, while a plan runs (`require_apply`).
    `core` and `apps` are the raw typed APIs, behind the same gate."""

    _writable = True

    def __init__(self, ctx: ApplyContext) -> None:
        require_apply(ctx, "a writing Kubernetes client (Kube)")
        super().__init__(ctx)
        self._ctx = ctx
        self.core = self._core
        self.apps = self._apps

    def create(self, kind: str, body: Any) -> Any:
        fn = {"service": self.core.create_namespaced_service}[kind]
        with self.call(f"creating {kind} '{body['metadata']['name']}'"):
            return fn(self.namespace, body, _request_timeout=30)

    def patch(self, kind: str, name: str, body: dict, content_type: str) -> Any:
        fn = {
            "configmap": self.core.patch_namespaced_config_map,
            "service": self.core.patch_namespaced_service,
            "deployment": self.apps.patch_namespaced_deployment,
        }[kind]
        with self.call(f"patching {kind} '{name}'"):
            return fn(name, self.namespace, body, _content_type=content_type, _request_timeout=30)


_RESOURCES = {"configmap": ("", "configmaps"), "service": ("", "services"), "deployment": ("apps", "deployments")}


class Conflict(ModuleError):
    """409: the object changed since it was read."""


class Forbidden(ModuleError):
    """401/403, or a permission these credentials lack: certain, whatever runs before the step."""

    certain = True


def register_kubeconfig_secrets(path: str | None, context: str | None) -> None:
    """Register every credential in the kubeconfig with the scrubber before anything can echo it."""
    import os

    import yaml

    file = os.path.expanduser(path or os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0])
    try:
        with open(file, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError):
        return  # the client reports the real problem
    for u in doc.get("users") or []:
        user = (u or {}).get("user") or {}
        for k in ("token", "password", "client-key-data"):
            if user.get(k):
                SCRUBBER.add(str(user[k]))
