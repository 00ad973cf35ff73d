"""Webhook notifications against a real HTTP server on loopback and the real sshd fleet: what is
sent for each event (generic JSON and Slack-compatible), secrets scrubbed, a failing webhook
retried and logged, a slow one never holding the run, and neither changing the exit status."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from engine.cli import main

pytestmark = pytest.mark.fleet

SECRET = "hook-secret-token-4711"


class Hook:
    """A real HTTP server on 127.0.0.1 that records every POST; `status` is what it answers,
    and while `hold` is clear every request waits for it (a slow webhook)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.status = 200
        self.hold = threading.Event()
        self.hold.set()
        self.arrived = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.requests.append((self.path, json.loads(body)))
                hook.arrived.set()
                hook.hold.wait(60)
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, path: str) -> list[str]:
        return [body.get("event", body.get("text", "")) for p, body in self.requests if p == path]

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def write_playbook(
    tmp_path: Path, hook: Hook, *, extra: dict | None = None, step: dict | None = None, timeout: float = 2
) -> Path:
    doc = {
        "name": "notified",
        "secrets": {"hook_token": {"env": "HOOK_TOKEN"}},
        "fleets": {"web": {"hosts": "web", "max_fail_percentage": 0}},
        "steps": [
            step
            or {
                "id": "touch",
                "module": "command",
                "fleet": "web",
                "args": {
                    "argv": ["sh", "-c", 'echo "token $HOOK_TOKEN" >&2; touch "$1"', "sh", "{{ root }}/x"],
                    "env": {"HOOK_TOKEN": "{{ hook_token }}"},  # never in argv (validate refuses that)
                    "creates": "{{ root }}/x",
                },
            }
        ],
        "notify": [
            {"url": f"{hook.url}/generic?t={{{{ hook_token }}}}", "timeout": timeout, "retries": 1},
            {"url": f"{hook.url}/slack", "format": "slack", "events": ["step_failed", "finished"], "timeout": 2},
            *(extra or {}).get("notify", []),
        ],
    }
    path = tmp_path / "pb.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_events_payloads_and_secrets(fleet_factory, tmp_path, hook, monkeypatch, capsys):
    monkeypatch.setenv("HOOK_TOKEN", SECRET)
    fleet = fleet_factory(3)
    inv = fleet.write_inventory(tmp_path / "inv.yml")
    pb = write_playbook(tmp_path, hook)
    fleet.stop_host(1)  # one host fails: a step_failed and, with no failure budget, budget_exceeded
    code = main(["run", str(pb), "-i", str(inv), "--state-dir", str(tmp_path / "state"), "--forks", "1"])
    assert code == 1
    paths = {p.split("?")[0] for p, _ in hook.requests}
    assert paths == {"/generic", "/slack"}
    generic = [b for p, b in hook.requests if p.startswith("/generic")]
    assert [b["event"] for b in generic][0] == "started" and generic[-1]["event"] == "finished"
    assert {"step_failed", "budget_exceeded"} <= {b["event"] for b in generic}
    failed = next(b for b in generic if b["event"] == "step_failed")
    assert failed["host"] == fleet.names[1] and failed["status"] == "unreachable" and failed["step"] == "touch"
    assert generic[-1]["exit_code"] == 1 and generic[-1]["failed_hosts"] == [fleet.names[1]]
    assert all(
        b["run"]["playbook"] == "notified" and b["run"]["run_id"] == generic[0]["run"]["run_id"] for b in generic
    )
    slack = [b for p, b in hook.requests if p == "/slack"]
    assert len(slack) == 2 and all(set(b) == {"text"} for b in slack)  # only the events it asked for
    assert "unreachable" in slack[0]["text"] and "finished" in slack[1]["text"]
    # the secret was in the URL's query (rendered) and in a step's stderr: never in a payload
    assert all(p.endswith(f"t={SECRET}") for p, _ in hook.requests if p.startswith("/generic"))
    assert SECRET not in json.dumps([b for _, b in hook.requests])
    assert SECRET not in "".join(capsys.readouterr())


def test_a_failing_webhook_is_retried_logged_and_changes_nothing(sshd_fleet, tmp_path, hook, monkeypatch, capsys):
    monkeypatch.setenv("HOOK_TOKEN", SECRET)
    inv = sshd_fleet.write_inventory(tmp_path / "inv.yml")
    hook.status = 500
    # the run's end waits for pending notifications at most the largest `timeout`: a long one, so
    # the retry is sent however loaded the machine is (the hook answers at once, nothing waits it out)
    pb = write_playbook(tmp_path, hook, timeout=60)
    state = str(tmp_path / "state")
    assert main(["run", str(pb), "-i", str(inv), "--state-dir", state]) == 0
    err = capsys.readouterr().err
    started = [p for p, b in hook.requests if p.startswith("/generic") and b["event"] == "started"]
    assert len(started) == 2  # the first attempt and its one retry (`retries: 1`)
    assert "could not deliver 'started' (HTTP 500)" in err and hook.url not in err and SECRET not in err
    hook.status = 404  # a webhook that refuses the payload is not asked again
    hook.requests.clear()
    assert main(["run", str(pb), "-i", str(inv), "--state-dir", state]) == 0
    assert len([1 for p, b in hook.requests if p.startswith("/generic") and b["event"] == "started"]) == 1


def test_a_slow_webhook_never_holds_the_run(sshd_fleet, tmp_path, hook, monkeypatch, capsys):
    monkeypatch.setenv("HOOK_TOKEN", SECRET)
    inv = sshd_fleet.write_inventory(tmp_path / "inv.yml")
    hook.hold.clear()  # every request waits until the test lets it go, after the run
    pb = write_playbook(tmp_path, hook)
    code = main(["run", str(pb), "-i", str(inv), "--state-dir", str(tmp_path / "state")])
    assert hook.arrived.is_set()  # the webhook was being called while the run went on...
    assert code == 0  # ...and the run finished with its own status while the webhook still hung
    assert not hook.hold.is_set()
    err = capsys.readouterr().err
    assert "could not deliver" in err or "dropped" in err
    for h in sshd_fleet:
        assert os.path.exists(Path(h.data_dir) / "x")


def test_a_bad_url_fails_before_any_host_and_bad_events_are_validate_errors(
    sshd_fleet, tmp_path, hook, monkeypatch, capsys
):
    monkeypatch.setenv("HOOK_TOKEN", SECRET)
    inv = sshd_fleet.write_inventory(tmp_path / "inv.yml")
    pb = write_playbook(tmp_path, hook, extra={"notify": [{"url": "ftp://example.invalid/x"}]})
    for h in sshd_fleet:
        Path(h.data_dir, "x").unlink(missing_ok=True)
    assert main(["run", str(pb), "-i", str(inv), "--state-dir", str(tmp_path / "state")]) == 1
    assert "must be an http:// or https:// URL" in capsys.readouterr().err
    assert not any(os.path.exists(Path(h.data_dir) / "x") for h in sshd_fleet)
    doc = yaml.safe_load(pb.read_text())
    doc["notify"] = [{"url": "http://127.0.0.1:9/x", "events": ["finishd"]}]
    pb.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(pb), "-i", str(inv)]) == 1
    err = capsys.readouterr().err
    assert "notify" in err and "finishd" in err
