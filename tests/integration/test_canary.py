"""The blue/green canary runbook (playbooks/canary.yml) through the CLI against a real
kube-apiserver + controller-manager (tests/harness/kube.py): deploy (image by digest, rollout,
switch), automatic revert of a rollout that never becomes ready, revert to a healthy digest."""

from __future__ import annotations

import json
import socket

import pytest
import yaml

from engine.errors import ArgError, ModuleError
from engine.model.config import Host
from engine.model.results import Change
from engine.module import PlanContext, get_module
from modules.canary_switch import CanaryArgs, rollout_state
from tests.integration import canary_env
from tests.integration.canary_env import BAD, PLAYBOOK, REPO, SIDECAR, A, B, cli, ctxs, healthy, live, results

canary = canary_env.canary  # the fixture


def test_runbook_switch_set_image_wait_revert(canary, capsys, kube_cluster):
    ns, core, apps, base = canary
    deploy = ["-e", "canary_colour=green", "-e", f"canary_image={B}", "-e", "rollout_timeout=60"]

    code, doc = cli(capsys, "plan", str(PLAYBOOK), *base, *deploy)
    assert code == 2, doc
    r = results(doc)
    dep_diff, cm, svc = r["canary"]["plan"]["diffs"]
    assert dep_diff["header"] == f"deployment/green-deployment container web ({ns})"
    assert (dep_diff["before"], dep_diff["after"]) == (f"image: {A}\n", f"image: {B}\n")
    assert cm["header"] == f"configmap/canary-env data.canaryEnv ({ns})"
    assert json.loads(cm["before"]) == {"selector": "blue", "image": A}
    assert json.loads(cm["after"]) == {"selector": "green", "image": B}
    assert (svc["header"], svc["before"], svc["after"]) == (
        f"service/canary spec.selector ({ns})",
        "app: blue\n",
        "app: green\n",
    )
    assert r["canary"]["plan"]["reason"] == f"roll green-deployment to {B}, then switch blue -> green"
    env, selector, green = live(core, apps, ns, "green")
    assert env["selector"] == "blue" and selector == {"app": "blue"} and green["web"].image == A  # dry run

    code, doc = cli(capsys, "run", str(PLAYBOOK), *base, *deploy)
    assert code == 0, doc
    env, selector, green = live(core, apps, ns, "green")
    assert env == {"selector": "green", "image": B} and selector == {"app": "green"}
    assert green["web"].image == B
    assert [p.container_port for p in green["web"].ports] == [8080]
    assert [(e.name, e.value) for e in green["web"].env] == [("WP_ENV", "canary"), ("COLOUR", "green")]
    assert green["proxy"].image == SIDECAR and [p.container_port for p in green["proxy"].ports] == [9000]
    assert [(e.name, e.value) for e in green["proxy"].env] == [("UPSTREAM", "127.0.0.1:8080")]
    done, text = rollout_state(green["dep"])
    assert done, text
    assert green["dep"].metadata.generation == 2  # one rollout: the record does not touch the Deployment
    assert healthy(core, ns) == {"green-deployment": {"web": [A, B]}}

    def live_pods():
        pods = core.list_namespaced_pod(ns, label_selector="app=green").items
        return [p for p in pods if p.metadata.deletion_timestamp is None]

    assert {p.spec.containers[0].image for p in live_pods()} == {B}  # the rolling update replaced the pods
    kube_cluster.wait_for(
        lambda: len(core.list_namespaced_pod(ns, label_selector="app=green").items) == 2, 30, "old pods gone"
    )

    code, doc = cli(capsys, "run", str(PLAYBOOK), *base, *deploy)  # idempotent
    assert code == 0 and {r["status"] for r in doc["results"]} <= {"ok", "skipped"}, doc

    # B turns out to be broken: revert the active colour to the last healthy digest before it
    code, doc = cli(capsys, "plan", str(PLAYBOOK), *base, "-e", "canary_action=revert", "-e", "canary_colour=green")
    assert code == 2
    (dep_diff, cm_diff) = results(doc)["canary"]["plan"]["diffs"]
    assert (dep_diff["before"], dep_diff["after"]) == (f"image: {B}\n", f"image: {A}\n")
    code, doc = cli(
        capsys,
        "run",
        str(PLAYBOOK),
        *base,
        "-e",
        "canary_action=revert",
        "-e",
        "canary_colour=green",
        "-e",
        "rollout_timeout=60",
    )
    assert code == 0, doc
    env, selector, green = live(core, apps, ns, "green")
    assert env == {"selector": "green", "image": A} and green["web"].image == A and green["proxy"].image == SIDECAR
    assert rollout_state(green["dep"])[0]
    assert healthy(core, ns) == {"green-deployment": {"web": [A]}}  # B is no longer healthy
    assert kube_cluster.kubelet.errors == []


def test_rollout_that_never_becomes_ready_is_reverted(canary, capsys, kube_cluster):
    ns, core, apps, base = canary
    code, doc = cli(capsys, "run", str(PLAYBOOK), *base, "-e", "canary_colour=green", "-e", f"canary_image={B}")
    assert code == 0, doc
    kube_cluster.kubelet.never_ready.add(BAD.split("@")[1])
    try:
        code, doc = cli(
            capsys,
            "run",
            str(PLAYBOOK),
            *base,
            "-e",
            "canary_colour=blue",
            "-e",
            f"canary_image={BAD}",
            "-e",
            "rollout_timeout=6",
        )
    finally:
        kube_cluster.kubelet.never_ready.discard(BAD.split("@")[1])
    assert code == 1, doc
    r = results(doc)["canary"]
    msg = r["message"]
    assert r["status"] == "failed" and "did not complete within 6s" in msg and f"image back to {A}" in msg, msg
    env, selector, blue = live(core, apps, ns, "blue")
    assert env == {"selector": "green", "image": B} and selector == {"app": "green"}  # traffic never left green
    assert blue["web"].image == A and blue["proxy"].image == SIDECAR
    kube_cluster.wait_for(
        lambda: rollout_state(apps.read_namespaced_deployment("blue-deployment", ns))[0], 60, "the rollback to complete"
    )


def test_conflict_is_retried_after_a_fresh_read(canary, kube_cluster, monkeypatch):
    """Someone else writes the ConfigMap between our read and our patch: the server answers 409
    (the patch carries the resourceVersion we read) and the switch is recomputed on a fresh read."""
    from modules._support.kube import Kube

    ns, core, apps, _ = canary
    module = get_module("canary_switch")
    pctx, actx = ctxs(kube_cluster, ns)
    plan = module.plan(pctx, CanaryArgs(action="switch"))
    assert plan.change == Change.WILL_CHANGE and set(plan.fingerprint) == {"configmap", "service"}
    real_read, raced = Kube.read, []

    def racing_read(self, kind, name):
        obj = real_read(self, kind, name)
        if kind == "configmap" and not raced:
            raced.append(1)  # another writer lands right after our read
            core.patch_namespaced_config_map("canary-env", ns, {"metadata": {"labels": {"touched": "yes"}}})
        return obj

    monkeypatch.setattr(Kube, "read", racing_read)
    module.apply(actx, plan)
    monkeypatch.undo()
    env, selector, _ = live(core, apps, ns, "green")
    cm = core.read_namespaced_config_map("canary-env", ns)
    assert env == {"selector": "green", "image": A} and selector == {"app": "green"}
    assert cm.metadata.labels == {"touched": "yes"}  # their change survived ours
    assert module.plan(pctx, CanaryArgs(action="switch", to="green")).change == Change.NO_CHANGE


def test_errors_are_translated(canary, kube_cluster):
    ns, *_ = canary
    module = get_module("canary_switch")
    pctx, _ = ctxs(kube_cluster, ns)
    with pytest.raises(ModuleError, match="configmap 'nope' not found in namespace"):
        module.plan(pctx, CanaryArgs(action="switch", configmap="nope"))
    with pytest.raises(ArgError, match="has no container 'app' \\(has: web, proxy\\)"):
        module.plan(pctx, CanaryArgs(action="set_image", image=B, container="app"))
    with pytest.raises(Exception, match="must be pinned by digest"):
        module.plan(pctx, CanaryArgs(action="set_image", image=f"{REPO}:latest"))
    other, _ = ctxs(kube_cluster, "default")
    with pytest.raises(ModuleError, match="not allowed \\(403\\)") as err:
        module.plan(other, CanaryArgs(action="switch"))
    assert kube_cluster.deployer_token not in str(err.value)
    from engine.secrets import MASK, SCRUBBER

    assert SCRUBBER.scrub(f"token {kube_cluster.deployer_token}") == f"token {MASK}"  # registered from the kubeconfig
    no_revert = module.plan(pctx, CanaryArgs(action="wait"))
    assert no_revert.change == Change.NO_CHANGE and "rolled out" in no_revert.reason
    with pytest.raises(ModuleError, match="no healthy image recorded"):
        module.plan(pctx, CanaryArgs(action="revert"))


def test_unreachable_api_server_makes_the_target_unreachable(tmp_path):
    """No cluster needed: a kubeconfig pointing at a closed loopback port."""
    from engine.errors import ConnectionFailed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "unreachable-token-0123456789"
    (tmp_path / "config").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [
                    {"name": "x", "cluster": {"server": f"https://127.0.0.1:{port}", "insecure-skip-tls-verify": True}}
                ],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "x", "user": "u", "namespace": "ns1"}}],
            }
        )
    )
    target = Host("k", connection="kubernetes", kubeconfig=str(tmp_path / "config"))
    ctx = PlanContext(
        host="k", step="canary", vars={}, run_id="r", release_id="rel", state_dir=str(tmp_path), target=target
    )
    with pytest.raises(ConnectionFailed, match="Kubernetes API unreachable") as err:
        get_module("canary_switch").plan(ctx, CanaryArgs(action="switch"))
    assert token not in str(err.value)
    not_kube = PlanContext(
        host="k",
        step="canary",
        vars={},
        run_id="r",
        release_id="rel",
        state_dir=str(tmp_path),
        target=Host("k", connection="local"),
    )
    with pytest.raises(ModuleError, match="runs on Kubernetes targets"):
        get_module("canary_switch").plan(not_kube, CanaryArgs(action="switch"))
