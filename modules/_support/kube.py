"""The Kubernetes API client boundary for modules that talk to a cluster (`canary_switch`):
one client per target from its kubeconfig and context, credentials registered with the
scrubber before anything can echo them, and every client-library error translated to ours
(`Kube.call`), so no `kubernetes.*` or `urllib3.*` exception leaves a module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from engine.errors import ConnectionFailed, ModuleError
from engine.secrets import SCRUBBER

__all__ = ["Kube", "Conflict", "Forbidden", "api_message", "register_kubeconfig_secrets"]


def api_message(exc: Any) -> str:
    try:
        body = json.loads(exc.body or "{}")
        return body.get("message") or exc.reason or str(exc.status)
    except (TypeError, ValueError):
        return str(exc.reason or exc.status)


class Kube:
    """The kubernetes client for one target, with every error translated to ours."""

    def __init__(self, target: Any, step: str) -> None:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        if target is None or getattr(target, "connection", None) != "kubernetes":
            raise ModuleError(
                "canary_switch runs on Kubernetes targets (inventory hosts with 'connection: kubernetes')", path=step
            )
        self.host = target.name
        self.step = step
        path = target.kubeconfig
        try:
            register_kubeconfig_secrets(path, target.context)
            self.api = config.new_client_from_config(config_file=path, context=target.context, persist_config=False)
            contexts, active = config.list_kube_config_contexts(config_file=path)
        except ConfigException as exc:
            raise ModuleError(f"kubeconfig {path or '(default)'}: {exc}", path=target.name) from None
        except OSError as exc:
            raise ModuleError(
                f"kubeconfig {path or '(default)'} unreadable: {exc.strerror}", path=target.name
            ) from None
        auth = self.api.configuration.api_key.get("authorization") or self.api.configuration.api_key.get("BearerToken")
        if auth:
            SCRUBBER.add(auth.split(" ", 1)[-1])
        self.api.configuration.retries = 1
        chosen = next((c for c in contexts if c["name"] == target.context), active) if target.context else active
        self.namespace = target.namespace or (chosen or {}).get("context", {}).get("namespace") or "default"
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)

    def close(self) -> None:
        self.api.close()

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

    def read(self, kind: str, name: str) -> Any:
        fn = {
            "configmap": self.core.read_namespaced_config_map,
            "service": self.core.read_namespaced_service,
            "deployment": self.apps.read_namespaced_deployment,
        }[kind]
        with self.call(f"{kind} '{name}'"):
            return fn(name, self.namespace, _request_timeout=30)

    def find(self, kind: str, name: str) -> Any:
        """Like `read`, but None when the object does not exist."""
        from kubernetes.client.exceptions import ApiException

        fn = {"service": self.core.read_namespaced_service, "deployment": self.apps.read_namespaced_deployment}[kind]
        with self.call(f"{kind} '{name}'"):
            try:
                return fn(name, self.namespace, _request_timeout=30)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    def create(self, kind: str, body: Any) -> Any:
        fn = {"service": self.core.create_namespaced_service}[kind]
        with self.call(f"creating {kind} '{body['metadata']['name']}'"):
            return fn(self.namespace, body, _request_timeout=30)

    def allowed(self, verb: str, kind: str, name: str | None = None) -> bool:
        """Whether these credentials may `verb` the `kind` in the namespace (a
        SelfSubjectAccessReview, which every authenticated user may ask; it changes nothing)."""
        from kubernetes import client

        group, resource = _RESOURCES[kind]
        attrs = {"namespace": self.namespace, "verb": verb, "group": group, "resource": resource}
        if name:
            attrs["name"] = name
        review: Any = {"spec": {"resourceAttributes": attrs}}
        with self.call(f"asking whether {verb} {resource} is allowed"):
            answer = client.AuthorizationV1Api(self.api).create_self_subject_access_review(review, _request_timeout=30)
        return bool(answer.status and answer.status.allowed)

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
