"""The canary fails safe (issue 14 item 5), on the real control plane: every failure after the
selector switch puts selector, ConfigMap and image back and exits 1; a Deployment reporting
ProgressDeadlineExceeded is reverted at once; the plan shows every change and labels a certain
error failed; an unknown `canary_action` is a validate error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.integration import canary_env
from tests.integration.canary_env import BAD, PLAYBOOK, REPO, A, B, cli, inventory, live, results

canary = canary_env.canary  # the fixture
ROOT = Path(__file__).resolve().parents[2]

#: the seed runbook's two steps: switch first, then roll the new active colour
TWO_STEP = {
    "name": "canary-two-step",
    "vars": {"colour": "green", "image": "", "container": "web", "timeout": 60},
    "fleets": {"canary": {"hosts": "k8s"}},
    "steps": [
        {
            "id": "switch",
            "module": "canary_switch",
            "fleet": "canary",
            "args": {"action": "switch", "to": "{{ colour }}"},
        },
        {
            "id": "set_image",
            "module": "canary_switch",
            "fleet": "canary",
            "needs": ["switch"],
            "args": {
                "action": "set_image",
                "colour": "{{ steps.switch.selector }}",
                "image": "{{ image }}",
                "container": "{{ container }}",
                "timeout_seconds": "{{ timeout }}",
            },
        },
    ],
}


def two_step(tmp_path) -> str:
    path = tmp_path / "two-step.yml"
    path.write_text(yaml.safe_dump(TWO_STEP, sort_keys=False))
    return str(path)


def untouched(core, apps, ns):
    env, selector, green = live(core, apps, ns, "green")
    _, _, blue = live(core, apps, ns, "blue")
    assert env == {"selector": "blue", "image": A} and selector == {"app": "blue"}
    assert green["web"].image == A and blue["web"].image == A


def test_failures_after_the_switch_put_everything_back(canary, capsys, kube_cluster, tmp_path):
    ns, core, apps, base = canary
    pb = two_step(tmp_path)
    limited = inventory(tmp_path, kube_cluster, ns, context="limited", name="limited.yml")
    cases = [
        (base, ["-e", f"image={REPO}:latest"], "must be pinned by digest"),
        (base, ["-e", f"image={B}", "-e", "container=app"], "has no container 'app' (has: web, proxy)"),
        (limited, ["-e", f"image={B}"], "not allowed to patch deployment 'green-deployment'"),
    ]
    for inv, extra, why in cases:
        code, doc = cli(capsys, "plan", pb, *inv, *extra)
        r = results(doc)
        assert code == 1 and r["switch"]["status"] == "changed", doc
        assert r["set_image"]["status"] == "failed" and why in r["set_image"]["message"], doc  # certain: not unknown

        code, doc = cli(capsys, "run", pb, *inv, *extra)
        r = results(doc)
        assert code == 1 and r["switch"]["status"] == "changed", doc
        msg = r["set_image"]["message"]
        assert r["set_image"]["status"] == "failed" and why in msg and "selector back to blue" in msg, msg
        untouched(core, apps, ns)


def test_progress_deadline_exceeded_is_reverted_at_once(canary, capsys, kube_cluster, tmp_path):
    """A rollout that can no longer complete fails when the Deployment says so, not after the
    step's timeout (an hour here): selector, ConfigMap and image all go back."""
    ns, core, apps, base = canary
    apps.patch_namespaced_deployment("green-deployment", ns, {"spec": {"progressDeadlineSeconds": 2}})
    kube_cluster.kubelet.never_ready.add(BAD.split("@")[1])
    argv = [sys.executable, "-m", "engine.cli", "run", two_step(tmp_path), *base, "-e", f"image={BAD}"]
    try:
        # a generous harness bound that fails loudly; the step's own timeout is an hour
        proc = subprocess.run([*argv, "-e", "timeout=3600"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    finally:
        kube_cluster.kubelet.never_ready.discard(BAD.split("@")[1])
    code, doc = proc.returncode, json.loads(proc.stdout)
    msg = results(doc)["set_image"]["message"]
    assert code == 1 and "progress deadline exceeded" in msg, msg
    assert f"image back to {A}" in msg and "selector back to blue" in msg, msg
    untouched(core, apps, ns)


def test_deploy_plans_every_change_and_refuses_before_touching(canary, capsys, kube_cluster, tmp_path):
    ns, core, apps, base = canary
    deploy = ["-e", "canary_colour=green", "-e", f"canary_image={B}"]
    code, doc = cli(capsys, "plan", str(PLAYBOOK), *base, *deploy)
    assert code == 2, doc
    diffs = {d["header"]: (d["before"], d["after"]) for d in results(doc)["canary"]["plan"]["diffs"]}
    assert diffs == {
        f"deployment/green-deployment container web ({ns})": (f"image: {A}\n", f"image: {B}\n"),
        f"configmap/canary-env data.canaryEnv ({ns})": (
            f'{{"selector":"blue","image":"{A}"}}\n',
            f'{{"selector":"green","image":"{B}"}}\n',
        ),
        f"service/canary spec.selector ({ns})": ("app: blue\n", "app: green\n"),
    }
    limited = inventory(tmp_path, kube_cluster, ns, context="limited", name="limited.yml")
    for inv, extra, why in [
        (base, ["-e", f"canary_image={REPO}:1.2"], "must be pinned by digest"),
        (limited, ["-e", f"canary_image={B}"], "not allowed to patch deployment 'green-deployment'"),
    ]:
        for command in ("plan", "run"):
            code, doc = cli(capsys, command, str(PLAYBOOK), *inv, "-e", "canary_colour=green", *extra)
            r = results(doc)["canary"]
            assert code == 1 and r["status"] == "failed" and why in r["message"], doc
            untouched(core, apps, ns)


def test_unknown_canary_action_is_a_validate_error(tmp_path, capsys):
    inv = tmp_path / "inv.yml"
    inv.write_text(
        yaml.safe_dump(
            {
                "hosts": {"wp-prod": {"connection": "kubernetes", "namespace": "ns"}},
                "groups": {"k8s": {"hosts": ["wp-prod"]}},
            }
        )
    )
    code, doc = cli(capsys, "validate", str(PLAYBOOK), "-i", str(inv), "-e", "canary_action=promot")
    err = doc["stderr"]
    assert code == 1 and "canary.yml:" in err and "steps.canary.args.action" in err, doc
    assert "'action' must be one of 'deploy'" in err and "(got string 'promot')" in err, err
    code, doc = cli(capsys, "validate", str(PLAYBOOK), "-i", str(inv), "-e", "canary_action=revert")
    assert code == 0, doc
