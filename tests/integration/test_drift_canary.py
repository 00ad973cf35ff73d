"""`playbook drift` for canary Deployments (issue 18, item 1) against a real kube-apiserver: the
image each Deployment was last set to and the active colour, as recorded, against what the
cluster has; a hand edit of either is drift, and drift itself writes nothing."""

from __future__ import annotations

import json

from engine.cli import main
from tests.integration.test_canary import PLAYBOOK, A, B, canary  # noqa: F401 - the fixture


def drift(capsys, base: list[str]) -> tuple[int, dict]:
    code = main(["drift", str(PLAYBOOK), *base])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in out + err, out + err
    return code, json.loads(out)


def versions(core, apps, ns: str) -> dict[str, str]:
    """What a write would change: the ConfigMap's and Service's resourceVersion, each
    Deployment's spec generation (its status moves on its own while a rollout runs)."""
    objs = [core.read_namespaced_config_map("canary-env", ns), core.read_namespaced_service("canary", ns)]
    out = {o.metadata.name: o.metadata.resource_version for o in objs}
    for c in ("blue", "green"):
        out[f"{c}-deployment"] = str(apps.read_namespaced_deployment(f"{c}-deployment", ns).metadata.generation)
    return out


def test_a_hand_set_image_and_a_hand_switched_service_are_drift(canary, capsys):  # noqa: F811
    ns, core, apps, base = canary
    deploy = ["-e", "canary_colour=green", "-e", f"canary_image={B}", "-e", "rollout_timeout=60"]
    assert main(["run", str(PLAYBOOK), *base, *deploy]) == 0, capsys.readouterr()
    capsys.readouterr()

    code, doc = drift(capsys, base)
    assert code == 0, doc
    assert {(h["host"], h["step"], h["status"]) for h in doc["hosts"]} == {("wp-prod", "canary", "ok")}

    patch = {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": A}]}}}}
    apps.patch_namespaced_deployment("green-deployment", ns, patch)  # by hand, behind playbook's back
    core.patch_namespaced_service("canary", ns, {"spec": {"selector": {"app": "blue"}}})
    before = versions(core, apps, ns)

    code, doc = drift(capsys, base)
    assert code == 2, doc
    assert doc["drifted"] == ["wp-prod"]
    # the runbook's one step deploys the image and switches: compared once for each
    found = [f for h in doc["hosts"] if h["step"] == "canary" for f in h["findings"]]
    image = [f for f in found if f["what"] == "image"]
    assert {(f["what"], f["path"], f["detail"]) for f in image} == {
        ("image", f"deployment/green-deployment container web ({ns})", f"is image: {A}, the history says image: {B}")
    }
    selector = [f for f in found if f["what"] == "selector"]
    assert ("selector", f"service/canary spec.selector ({ns})", "is app: blue, the history says app: green") in {
        (f["what"], f["path"], f["detail"]) for f in selector
    }

    code = main(["drift", str(PLAYBOOK), *[a for a in base if a != "json"][:-1]])  # the console view
    out = capsys.readouterr().out
    assert code == 2 and f"~ deployment/green-deployment container web ({ns})  is image: {A}" in out, out
    assert versions(core, apps, ns) == before  # drift wrote nothing to the cluster
