"""Blue/green beside Argo Rollouts (issue 17), on the real control plane, a real loopback HTTP
endpoint and a real Prometheus server scraping a loopback exporter: preview, checks before the
switch, promote / pause / abort (each idempotent), and the watch after the switch that switches
back when a check fails."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.integration import canary_env
from tests.integration.canary_env import A, B, cli, live, results

canary = canary_env.canary  # the fixtures
metrics = canary_env.metrics
ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "playbooks" / "canary-bluegreen.yml"


def checks(metrics, **extra: str) -> list[str]:
    loop, prom = metrics
    vars_ = {
        "preview_url": f"{loop.url}/healthz",
        "prometheus_url": prom.url,
        "error_query": "canary_error_ratio",
        "checks": "2",
        "check_interval": "0.2",
        "watch_seconds": "0",
        "scale_down_delay": "0",
        "rollout_timeout": "120",
        **extra,
    }
    return [a for k, v in vars_.items() for a in ("-e", f"{k}={v}")]


def set_ratio(metrics, value: float) -> None:
    loop, prom = metrics
    loop.gauges["canary_error_ratio"] = value
    prom.wait_for_value("canary_error_ratio", value)


def preview_colour(core, ns: str) -> str:
    return core.read_namespaced_service("canary-preview", ns).spec.selector["app"]


def test_pause_promote_abort_are_idempotent_and_planned(canary, metrics, capsys):
    ns, core, apps, base = canary
    set_ratio(metrics, 0.01)
    promote = [*base, *checks(metrics), "-e", "canary_action=promote"]
    code, doc = cli(capsys, "plan", str(PLAYBOOK), *promote)  # nothing previewed yet: a certain error
    r = results(doc)["canary"]
    assert (
        code == 1
        and r["status"] == "failed"
        and "nothing to promote: preview 'canary-preview' does not exist" in r["message"]
    )
    pause = [*base, *checks(metrics), "-e", "canary_action=pause", "-e", f"canary_image={B}"]
    code, doc = cli(capsys, "plan", str(PLAYBOOK), *pause)
    assert code == 2, doc
    diffs = {d["header"]: (d["before"], d["after"]) for d in results(doc)["canary"]["plan"]["diffs"]}
    assert diffs == {
        f"deployment/green-deployment container web ({ns})": (f"image: {A}\n", f"image: {B}\n"),
        f"service/canary-preview (created from service/canary) ({ns})": ("", "app: green\n"),
    }
    code, doc = cli(capsys, "run", str(PLAYBOOK), *pause)
    assert code == 0, doc
    env, selector, green = live(core, apps, ns, "green")
    assert env == {"selector": "blue", "image": A} and selector == {"app": "blue"}  # production untouched
    assert green["web"].image == B and preview_colour(core, ns) == "green"
    code, doc = cli(capsys, "run", str(PLAYBOOK), *pause)
    assert code == 0 and results(doc)["canary"]["status"] == "ok", doc  # idempotent

    code, doc = cli(capsys, "plan", str(PLAYBOOK), *promote)
    assert code == 2, doc
    plan = results(doc)["canary"]["plan"]
    assert (
        plan["reason"]
        == "2 pre-promotion checks every 0.2s, then switch blue -> green, then scale blue down after 0s more"
    )
    assert [d["header"] for d in plan["diffs"]] == [
        f"configmap/canary-env data.canaryEnv ({ns})",
        f"service/canary spec.selector ({ns})",
    ]
    asked = len(metrics[0].requests)
    code, doc = cli(capsys, "run", str(PLAYBOOK), *promote)
    assert code == 0, doc
    assert metrics[0].requests[asked:].count("/healthz") == 2  # the checks ran against the preview
    env, selector, _ = live(core, apps, ns, "green")
    assert env == {"selector": "green", "image": B} and selector == {"app": "green"}
    code, doc = cli(capsys, "run", str(PLAYBOOK), *promote)
    assert code == 0 and results(doc)["canary"]["status"] == "ok", doc
    _, _, blue = live(core, apps, ns, "blue")
    assert blue["dep"].spec.replicas == 0  # scale_down_delay 0: scaled down once promoted

    # blue is now idle: preview a release there (scaled back up first), then abort it
    pause_blue = [*base, *checks(metrics), "-e", "canary_action=pause", "-e", f"canary_image={B}"]
    code, doc = cli(capsys, "plan", str(PLAYBOOK), *pause_blue)
    diffs = {d["header"]: (d["before"], d["after"]) for d in results(doc)["canary"]["plan"]["diffs"]}
    assert diffs[f"deployment/blue-deployment replicas ({ns})"] == ("replicas: 0\n", "replicas: 2\n"), doc
    code, doc = cli(capsys, "run", str(PLAYBOOK), *pause_blue)
    assert code == 0 and preview_colour(core, ns) == "blue", doc
    _, _, blue = live(core, apps, ns, "blue")
    assert blue["dep"].spec.replicas == 2 and blue["dep"].status.ready_replicas == 2
    abort = [*base, *checks(metrics), "-e", "canary_action=abort"]
    code, doc = cli(capsys, "plan", str(PLAYBOOK), *abort)
    assert code == 2 and len(results(doc)["canary"]["plan"]["diffs"]) == 2, doc
    code, doc = cli(capsys, "run", str(PLAYBOOK), *abort)
    assert code == 0, doc
    _, _, blue = live(core, apps, ns, "blue")
    assert blue["web"].image == A and preview_colour(core, ns) == "green"  # back to the active colour
    code, doc = cli(capsys, "run", str(PLAYBOOK), *abort)
    assert code == 0 and results(doc)["canary"]["status"] == "ok", doc


def test_a_failed_check_before_promotion_switches_nothing(canary, metrics, capsys):
    ns, core, apps, base = canary
    deploy = [*base, "-e", f"canary_image={B}"]
    for extra, why in [
        ({}, "canary_error_ratio' = 0.5, above 0.05"),
        ({"error_query": "canary_missing_metric"}, "'canary_missing_metric': no data"),
    ]:
        set_ratio(metrics, 0.5)
        code, doc = cli(capsys, "run", str(PLAYBOOK), *deploy, *checks(metrics, **extra))
        msg = results(doc)["canary"]["message"]
        assert code == 1 and "pre-promotion analysis failed" in msg and why in msg, msg
        assert "nothing switched" in msg and f"image back to {A}" in msg, msg
        env, selector, green = live(core, apps, ns, "green")
        assert env == {"selector": "blue", "image": A} and selector == {"app": "blue"}
        assert green["web"].image == A and preview_colour(core, ns) == "blue"
    set_ratio(metrics, 0.01)
    metrics[0].health = (503, "down")
    try:
        code, doc = cli(capsys, "run", str(PLAYBOOK), *deploy, *checks(metrics))
    finally:
        metrics[0].health = (200, "ok")
    assert code == 1 and "status 503 (expected 200)" in results(doc)["canary"]["message"], doc
    assert live(core, apps, ns, "green")[1] == {"app": "blue"}


def test_a_failed_check_after_promotion_switches_back(canary, metrics, kube_cluster, record_property):
    """Promoted and watched: the error ratio rises, Prometheus reports it, and the selector goes
    back to blue (never scaled down) while the step fails."""
    ns, core, apps, base = canary
    set_ratio(metrics, 0.01)
    argv = [sys.executable, "-m", "engine.cli", "run", str(PLAYBOOK), *base, "-e", f"canary_image={B}"]
    argv += checks(metrics, watch_seconds="900", check_interval="0.5")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        kube_cluster.wait_for(lambda: live(core, apps, ns, "green")[1] == {"app": "green"}, 180, "the promotion")
        assert proc.poll() is None  # watching
        set_ratio(metrics, 0.7)
        reported = time.monotonic()  # Prometheus's API answers the bad value from here on
        kube_cluster.wait_for(lambda: live(core, apps, ns, "green")[1] == {"app": "blue"}, 60, "the switch back")
        record_property("switch_back_after_s", round(time.monotonic() - reported, 2))  # measured, not asserted
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        set_ratio(metrics, 0.01)
    assert proc.returncode == 1, err
    msg = results(json.loads(out))["canary"]["message"]
    assert "post-promotion check failed" in msg and "above 0.05" in msg and "selector back to blue" in msg, msg
    env, selector, blue = live(core, apps, ns, "blue")
    assert env == {"selector": "blue", "image": A} and selector == {"app": "blue"}
    assert blue["dep"].status.ready_replicas == 2  # kept warm: traffic went back to running pods
