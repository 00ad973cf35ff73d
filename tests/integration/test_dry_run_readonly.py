"""A dry run writes nothing, for every registered module, against the real services.

Each module in the registry is planned (`plan`, through the engine) in a world where its plan
has something to change, while the servers record what reaches them: the sshd fleet's trees
(compared before and after), a bare git remote (its refs, its objects, and a pre-receive hook
that records any push), a loopback HTTP server and recording proxies in front of Verdaccio and
moto (only GET and HEAD may arrive), and the kube-apiserver's audit log (no create, update,
patch or delete by the deployer). The list of modules is the registry itself, so a new module
without a scenario here fails until it gets one.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.model.results import Status
from engine.module import all_modules
from tests.harness.recording import RecordingServer
from tests.harness.untouched import World

pytestmark = pytest.mark.fleet

REPO = "registry.example.test/wp"
A, B = (f"{REPO}@sha256:{c * 64}" for c in ("a", "b"))


# -- one scenario per module: a playbook whose plan has something to change -------------------


def base(world: World, steps: list[dict], sources: dict | None = None) -> dict:
    return {
        "name": f"dry-{uuid.uuid4().hex[:6]}",
        "sources": sources or {},
        "fleets": {"web": {"hosts": "web"}, **({"canary": {"hosts": "k8s"}} if world.k8s_host else {})},
        "steps": steps,
    }


def code_tree(world: World, version: int) -> Path:
    src = world.tmp / f"src{version}"
    for i in range(5):
        p = src / f"app/f{i}.php"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"<?php // v{version} {i}\n")
        os.utime(p, (1_700_000_000 + version, 1_700_000_000 + version))
    return src


def dest(world: World, what: str) -> str:
    return "{{ root }}/" + f"{world.app}/{what}"


def sync_step(world: World, path: str = "{{ sources.code.path }}") -> dict:
    return {
        "id": "sync",
        "module": "rsync",
        "fleet": "web",
        "args": {"src": path, "dest": dest(world, "app"), "releases": True},
    }


def local_source(world: World, version: int = 1) -> dict:
    return {"code": {"type": "local", "path": str(code_tree(world, version))}}


def deployed_twice(world: World) -> dict[tuple[str, str | None], Any]:
    """Two releases on every host (`r1`, then `r2` live): what a switch back can move to. The
    results of the second run."""
    for n, rid in ((1, "20260101T000001Z"), (2, "20260101T000002Z")):
        pb = base(world, [sync_step(world)], local_source(world, n))
        res = world.execute(pb, "run", release_id=rid)
        assert {r.status for r in res.values()} <= {Status.CHANGED, Status.OK}, res
    return res


def s3_object(world: World) -> tuple[str, str, str, bytes]:
    import boto3

    endpoint = world.request.getfixturevalue("moto_s3")
    s3 = boto3.client("s3", endpoint_url=endpoint)
    bucket, key, body = f"dry-{uuid.uuid4().hex[:8]}", "widgets.txt", b"widgets v1\n"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256")
    return endpoint, bucket, key, body


def rsync(world: World) -> tuple[dict, dict]:
    return base(world, [sync_step(world)], local_source(world)), {"sync": Status.CHANGED}


def local_tree(world: World) -> tuple[dict, dict]:
    return base(world, [sync_step(world)], local_source(world)), {"sources.code": Status.OK}


def command(world: World) -> tuple[dict, dict]:
    made = dest(world, "touched")
    step = {"id": "touch", "module": "command", "fleet": "web", "args": {"argv": ["touch", made], "creates": made}}
    return base(world, [step]), {"touch": Status.CHANGED}


def migrate(world: World) -> tuple[dict, dict]:
    args = {
        "name": "add_index",
        "up": "touch " + dest(world, "migrated"),
        "down": "rm -f " + dest(world, "migrated"),
        "ledger_dir": dest(world, "ledger"),
    }
    return base(world, [{"id": "db", "module": "migrate", "fleet": "web", "args": args}]), {"db": Status.CHANGED}


def cache_clear(world: World) -> tuple[dict, dict]:
    steps = [
        {
            "id": "flush",
            "module": "cache_clear",
            "fleet": "web",
            "args": {"command": ["touch", dest(world, "flushed")]},
        },
        {
            "id": "purge",
            "module": "cache_clear",
            "fleet": "web",
            "args": {"http": {"url": world.http.url + "/purge/{{ host.name }}", "method": "PURGE"}},
        },
    ]
    return base(world, steps), {"flush": Status.CHANGED, "purge": Status.CHANGED}


def release_state(world: World) -> tuple[dict, dict]:
    deployed_twice(world)
    step = {"id": "live", "module": "release_state", "fleet": "web", "args": {"dest": dest(world, "app")}}
    return base(world, [step]), {"live": Status.OK}


def release_switch(world: World) -> tuple[dict, dict]:
    deployed_twice(world)
    args = {"dest": dest(world, "app"), "release": "20260101T000001Z"}
    return base(world, [{"id": "back", "module": "release_switch", "fleet": "web", "args": args}]), {
        "back": Status.CHANGED
    }


def tree_state(world: World) -> tuple[dict, dict]:
    res = deployed_twice(world)
    expect = {host: r.outputs["tree_digest"] for (step, host), r in res.items() if step == "sync"}
    args = {"dest": dest(world, "app"), "releases": True, "expect": expect}

    def compared(results: dict) -> None:  # the recorded tree went to each host and came back equal
        assert {r.outputs["recorded"] for (s, _), r in results.items() if s == "drift"} == {"found"}

    world.checks.append(compared)
    return base(world, [{"id": "drift", "module": "tree_state", "fleet": "web", "args": args}]), {"drift": Status.OK}


def s3_fetch(world: World) -> tuple[dict, dict]:
    endpoint, bucket, key, _ = s3_object(world)
    proxy = world.proxy(endpoint)
    src = {"widgets": {"type": "s3", "bucket": bucket, "key": key, "endpoint_url": proxy.url, "extract": "none"}}
    steps = [sync_step(world, "{{ sources.widgets.path }}")]
    return base(world, steps, src), {"sources.widgets": Status.CHANGED}


def recorded_artifact(world: World) -> tuple[dict, dict]:
    endpoint, bucket, key, body = s3_object(world)
    proxy = world.proxy(endpoint)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    fetch = {"type": "s3", "bucket": bucket, "key": key, "endpoint_url": proxy.url, "extract": "none"}
    src = {"widgets": {"type": "recorded", "digest": digest, "path": "blob", "fetch": {**fetch, "sha256": digest}}}
    steps = [sync_step(world, "{{ sources.widgets.path }}")]
    return base(world, steps, src), {"sources.widgets": Status.OK}


def npm_fetch(world: World) -> tuple[dict, dict]:
    from tests.integration.test_widgets_templates import publish

    registry = world.request.getfixturevalue("verdaccio")
    name = f"@seed/dry-{uuid.uuid4().hex[:8]}"
    world.env["DRY_NPM_TOKEN"] = registry.add_user(f"dry-{uuid.uuid4().hex[:6]}")
    publish(registry, world.tmp, name, "1.0.0", {"index.html": "<html>v1</html>"})
    proxy = world.proxy(registry.url)
    src = {
        "tpl": {"type": "npm", "package": name, "version": "1.0.0", "registry": proxy.url, "token_env": "DRY_NPM_TOKEN"}
    }
    steps = [sync_step(world, "{{ sources.tpl.path }}")]
    return base(world, steps, src), {"sources.tpl": Status.CHANGED}


def helm_bump(world: World) -> tuple[dict, dict]:
    remote = world.remote({"release.yaml": "spec:\n  values:\n    image:\n      tag: v1  # pinned\n"})
    args = {
        "repo": remote.url,
        "file": "release.yaml",
        "key_path": "spec.values.image.tag",
        "tag": "v2",
        "author_name": "Deploy Bot",
        "author_email": "deploy@example.test",
    }
    return base(world, [{"id": "bump", "module": "helm_bump", "args": args}]), {"bump": Status.CHANGED}


def canary_switch(world: World) -> tuple[dict, dict]:
    import json

    from kubernetes import client

    cluster = world.request.getfixturevalue("kube_cluster")
    ns = cluster.add_namespace(f"dry-{uuid.uuid4().hex[:8]}")
    admin = cluster.admin_client()
    try:
        core, apps = client.CoreV1Api(admin), client.AppsV1Api(admin)
        env = json.dumps({"selector": "blue", "image": A}, separators=(",", ":"))
        core.create_namespaced_config_map(ns, {"metadata": {"name": "canary-env"}, "data": {"canaryEnv": env}})
        core.create_namespaced_service(
            ns, {"metadata": {"name": "canary"}, "spec": {"selector": {"app": "blue"}, "ports": [{"port": 80}]}}
        )
        for colour in ("blue", "green"):
            labels = {"app": colour}
            apps.create_namespaced_deployment(
                ns,
                {
                    "metadata": {"name": f"{colour}-deployment", "labels": labels},
                    "spec": {
                        "replicas": 1,
                        "selector": {"matchLabels": labels},
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": {"containers": [{"name": "web", "image": A}]},
                        },
                    },
                },
            )
    finally:
        admin.close()
    world.kube = cluster
    world.k8s_host = {
        "connection": "kubernetes",
        "kubeconfig": str(cluster.kubeconfig),
        "context": "test",
        "namespace": ns,
    }
    steps = [
        {"id": "switch", "module": "canary_switch", "fleet": "canary", "args": {"action": "switch", "to": "green"}},
        {
            "id": "set_image",
            "module": "canary_switch",
            "fleet": "canary",
            "args": {"action": "set_image", "colour": "green", "image": B, "wait": False},
        },
    ]
    return base(world, steps), {"switch": Status.CHANGED, "set_image": Status.CHANGED}


SCENARIOS: dict[str, Callable[[World], tuple[dict, dict]]] = {
    f.__name__: f
    for f in (
        rsync,
        local_tree,
        command,
        migrate,
        cache_clear,
        release_state,
        tree_state,
        release_switch,
        tree_state,
        s3_fetch,
        recorded_artifact,
        npm_fetch,
        helm_bump,
        canary_switch,
    )
}


@pytest.fixture
def world(request, sshd_fleet, tmp_path):
    with RecordingServer() as http:
        w = World(request, tmp_path, sshd_fleet, http)
        try:
            yield w
        finally:
            for p in w.proxies:
                p.stop()


@pytest.mark.parametrize("name", sorted(all_modules()))
def test_plan_of_every_module_writes_nothing(name, world, monkeypatch):
    scenario = SCENARIOS.get(name)
    assert scenario is not None, (
        f"module '{name}' has no dry-run scenario in {__file__}: add one that makes its plan see a change"
    )
    playbook, expected = scenario(world)
    for k, v in world.env.items():
        monkeypatch.setenv(k, v)
    kube_from = len(world.kube.audit_events()) if world.kube else 0
    before = world.snapshot()
    started = time.monotonic()
    results = world.execute(playbook, "plan")
    got = {}
    for (step, _host), r in results.items():
        if step in expected:
            got.setdefault(step, set()).add(r.status)
    messages = {k: r.message for k, r in results.items() if r.status not in (Status.CHANGED, Status.OK)}
    assert got == {s: {st} for s, st in expected.items()}, (got, messages, time.monotonic() - started)
    for check in world.checks:
        check(results)
    world.assert_untouched(before, kube_from)
