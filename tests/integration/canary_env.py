"""What the canary tests share: the runbook's objects in a fresh namespace of the real control
plane (tests/harness/kube.py), an inventory naming it as a Kubernetes target, and readers of the
live state."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from engine.cli import main
from engine.model.config import Host
from engine.module import ApplyContext, PlanContext
from modules.canary_switch import HEALTHY_ANNOTATION, rollout_state

PLAYBOOK = Path(__file__).resolve().parents[2] / "playbooks" / "canary.yml"
REPO = "registry.example.test/wp"
A, B, BAD = (f"{REPO}@sha256:{c * 64}" for c in ("a", "b", "d"))
SIDECAR = "registry.example.test/proxy:1.25"

_counter = iter(range(1000))


def deployment(colour: str, image: str) -> dict:
    return {
        "metadata": {"name": f"{colour}-deployment", "labels": {"app": colour}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": colour}},
            "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": {"app": colour}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": image,
                            "ports": [{"containerPort": 8080, "name": "http"}],
                            "env": [{"name": "WP_ENV", "value": "canary"}, {"name": "COLOUR", "value": colour}],
                        },
                        {
                            "name": "proxy",
                            "image": SIDECAR,
                            "ports": [{"containerPort": 9000, "name": "metrics"}],
                            "env": [{"name": "UPSTREAM", "value": "127.0.0.1:8080"}],
                        },
                    ]
                },
            },
        },
    }


def inventory(tmp_path: Path, kube_cluster, ns: str, context: str = "test", name: str = "inv.yml") -> list[str]:
    """CLI arguments (-i, --state-dir, --format json) for a target on `ns` as `context`'s user."""
    inv = {
        "hosts": {
            "wp-prod": {
                "connection": "kubernetes",
                "kubeconfig": str(kube_cluster.kubeconfig),
                "context": context,
                "namespace": ns,
            }
        },
        "groups": {"k8s": {"hosts": ["wp-prod"]}},
    }
    (tmp_path / name).write_text(yaml.safe_dump(inv))
    return ["-i", str(tmp_path / name), "--state-dir", str(tmp_path / "state"), "--format", "json"]


@pytest.fixture
def canary(kube_cluster, tmp_path):
    """A fresh namespace with the runbook's objects (blue active, both colours on image A), an
    inventory naming it as a Kubernetes target, and the CLI arguments to run the playbook."""
    from kubernetes import client

    ns = kube_cluster.add_namespace(f"canary-{next(_counter)}-{int(time.time()) % 100000}")
    api = kube_cluster.admin_client()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    core.create_namespaced_config_map(
        ns,
        {
            "metadata": {"name": "canary-env"},
            "data": {"canaryEnv": json.dumps({"selector": "blue", "image": A}, separators=(",", ":"))},
        },
    )
    core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": "canary"},
            "spec": {"selector": {"app": "blue"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        },
    )
    for colour in ("blue", "green"):
        apps.create_namespaced_deployment(ns, deployment(colour, A))
    for colour in ("blue", "green"):
        kube_cluster.wait_for(
            lambda colour=colour: rollout_state(apps.read_namespaced_deployment(f"{colour}-deployment", ns))[0],
            60,
            f"{colour} rolled out",
        )
    yield ns, core, apps, inventory(tmp_path, kube_cluster, ns)
    api.close()


def cli(capsys, *args: str) -> tuple[int, dict]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip().startswith("{") else {"stderr": err, "stdout": out}


def live(core, apps, ns: str, colour: str) -> tuple[dict, dict, dict]:
    env = json.loads(core.read_namespaced_config_map("canary-env", ns).data["canaryEnv"])
    svc = core.read_namespaced_service("canary", ns)
    dep = apps.read_namespaced_deployment(f"{colour}-deployment", ns)
    containers = {c.name: c for c in dep.spec.template.spec.containers}
    return env, svc.spec.selector, {"dep": dep, **containers}


def healthy(core, ns: str) -> dict:
    return json.loads(core.read_namespaced_config_map("canary-env", ns).metadata.annotations[HEALTHY_ANNOTATION])


def results(doc: dict) -> dict[str, dict]:
    return {r["step"]: r for r in doc["results"]}


def ctxs(kube_cluster, ns: str, run_id: str = "r1", context: str = "test"):
    target = Host(
        "wp-prod", connection="kubernetes", kubeconfig=str(kube_cluster.kubeconfig), context=context, namespace=ns
    )
    common = dict(
        host="wp-prod", step="canary", vars={}, run_id=run_id, release_id="rel", state_dir="/tmp", target=target
    )
    return PlanContext(**common), ApplyContext(mode="run", **common)


@pytest.fixture(scope="module")
def metrics(tmp_path_factory):
    """A loopback HTTP server (`/healthz`, `/metrics` with `canary_error_ratio`) and a real
    Prometheus scraping it; yields (loopback, prometheus) with the ratio at 0.01 and the API
    already answering it."""
    import os

    from tests.harness.prometheus import Loopback, Prometheus, missing_prometheus

    missing = missing_prometheus()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} missing: .ci/test installs it")
        pytest.skip(f"{missing} missing")
    loop = Loopback().start()
    loop.gauges["canary_error_ratio"] = 0.01
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), loop.url.split("//", 1)[1])
    try:
        prom.start()
        prom.wait_for_value("canary_error_ratio", 0.01)
        yield loop, prom
    finally:
        prom.stop()
        loop.stop()
