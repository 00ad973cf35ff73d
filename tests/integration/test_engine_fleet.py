"""The engine against the real sshd fleet: plan/run/plan, host keys, --limit, serial, interrupts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from engine.cli import main
from tests.harness.terminal import wait_for

pytestmark = pytest.mark.fleet


def write_playbook(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def results(out: str) -> dict[tuple[str, str | None], dict]:
    doc = json.loads(out)
    return {(r["step"], r["host"]): r for r in doc["results"]}


@pytest.fixture
def inventory(sshd_fleet, tmp_path):
    return sshd_fleet.write_inventory(tmp_path / "inventory.yml")


MARK = """\
    fleets:
      web: {hosts: web}
    steps:
      - id: mark
        module: command
        fleet: web
        args:
          argv: [sh, -c, 'echo "$1" > "$2"', sh, "{{ host.name }}", "{{ root }}/marker-{{ run_tag }}"]
          creates: "{{ root }}/marker-{{ run_tag }}"
    """


def test_plan_run_plan(sshd_fleet, inventory, tmp_path, capsys):
    pb = write_playbook(tmp_path / "pb.yml", MARK)
    args = ["-i", str(inventory), "-e", "run_tag=prr", "--format", "json", "--state-dir", str(tmp_path / "state")]
    assert main(["plan", str(pb), *args]) == 2
    planned = results(capsys.readouterr().out)
    assert {r["status"] for r in planned.values()} == {"changed"}
    assert not any((h.data_dir / "marker-prr").exists() for h in sshd_fleet)

    assert main(["run", str(pb), *args]) == 0
    ran = results(capsys.readouterr().out)
    assert {k[1] for k, r in ran.items() if r["status"] == "changed"} == set(sshd_fleet.names)
    for h in sshd_fleet:
        assert (h.data_dir / "marker-prr").read_text().strip() == h.name

    assert main(["plan", str(pb), *args]) == 0
    again = results(capsys.readouterr().out)
    assert {r["status"] for r in again.values()} == {"ok"}


def test_unknown_host_key_fails_only_that_host(sshd_fleet, inventory, tmp_path, capsys):
    partial = sshd_fleet.write_known_hosts(tmp_path / "known_hosts_partial", only=[0, 2])
    inv = yaml.safe_load(inventory.read_text())
    inv["defaults"]["known_hosts"] = str(partial)
    inventory.write_text(yaml.safe_dump(inv))
    pb = write_playbook(tmp_path / "pb.yml", MARK)
    code = main(
        [
            "run",
            str(pb),
            "-i",
            str(inventory),
            "-e",
            "run_tag=hk",
            "--format",
            "json",
            "--state-dir",
            str(tmp_path / "state"),
        ]
    )
    res = results(capsys.readouterr().out)
    assert code == 1
    bad = sshd_fleet.names[1]
    assert res[("mark", bad)]["status"] == "unreachable"
    assert "unknown host key" in res[("mark", bad)]["message"]
    assert "SHA256:" in res[("mark", bad)]["message"]
    assert not (sshd_fleet[1].data_dir / "marker-hk").exists()
    for i in (0, 2):
        assert res[("mark", sshd_fleet.names[i])]["status"] == "changed"


def test_limit_selects_hosts(sshd_fleet, inventory, tmp_path, capsys):
    pb = write_playbook(tmp_path / "pb.yml", MARK)
    names = sshd_fleet.names
    code = main(
        [
            "run",
            str(pb),
            "-i",
            str(inventory),
            "-e",
            "run_tag=lim",
            "--limit",
            f"web:!{names[1]}",
            "--format",
            "json",
            "--state-dir",
            str(tmp_path / "state"),
        ]
    )
    assert code == 0
    res = results(capsys.readouterr().out)
    assert sorted(h for (_, h) in res) == sorted([names[0], names[2]])
    assert not (sshd_fleet[1].data_dir / "marker-lim").exists()


def test_serial_batches_on_the_fleet(sshd_fleet, inventory, tmp_path, capsys):
    pb = write_playbook(
        tmp_path / "pb.yml",
        """\
        fleets:
          web: {hosts: web, serial: 1}
        steps:
          - id: a
            module: command
            fleet: web
            args: {argv: [sleep, "0.2"]}
          - id: b
            module: command
            fleet: web
            needs: [a]
            args: {argv: ["true"]}
        """,
    )
    code = main(["run", str(pb), "-i", str(inventory), "--format", "jsonl", "--state-dir", str(tmp_path / "state")])
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    seq = [(e["event"], e.get("host")) for e in events if e["event"] in ("step_started", "step_finished")]
    names = sshd_fleet.names
    for earlier, later in zip(names, names[1:]):
        last_finish = max(i for i, (ev, h) in enumerate(seq) if ev == "step_finished" and h == earlier)
        first_start = min(i for i, (ev, h) in enumerate(seq) if ev == "step_started" and h == later)
        assert last_finish < first_start


def test_step_timeout(sshd_fleet, inventory, tmp_path, capsys):
    pb = write_playbook(
        tmp_path / "pb.yml",
        """\
        fleets:
          web: {hosts: web}
        steps:
          - id: slow
            module: command
            fleet: web
            timeout: 0.5
            args: {argv: [sleep, "120"]}
        """,
    )
    started = time.monotonic()
    code = main(["run", str(pb), "-i", str(inventory), "--format", "json", "--state-dir", str(tmp_path / "state")])
    assert code == 1
    res = results(capsys.readouterr().out)
    assert all(r["status"] == "failed" and "timed out" in r["message"] for r in res.values())
    assert time.monotonic() - started < 60  # cut off, not waited for (generous: a loaded machine)


def test_sigint_lets_in_flight_steps_finish(sshd_fleet, inventory, tmp_path):
    pb = write_playbook(
        tmp_path / "pb.yml",
        """\
        fleets:
          web: {hosts: web}
        steps:
          - id: slow
            module: command
            fleet: web
            args: {argv: [sh, -c, 'touch "$1.started"; read _ < "$1.go"; echo done > "$1"', sh, "{{ root }}/sigint-done"]}
        """,
    )
    for h in sshd_fleet:
        (h.data_dir / "sigint-done").unlink(missing_ok=True)
        (h.data_dir / "sigint-done.go").unlink(missing_ok=True)
        (h.data_dir / "sigint-done.started").unlink(missing_ok=True)
        os.mkfifo(h.data_dir / "sigint-done.go")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "run",
            str(pb),
            "-i",
            str(inventory),
            "--forks",
            "1",
            "--format",
            "jsonl",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "step_started":
            break
    # the interrupt comes once the command runs on the host (not merely once the step started:
    # a step still rendering its arguments is skipped, nothing done, and would never read the FIFO)
    wait_for(lambda: (sshd_fleet[0].data_dir / "sigint-done.started").exists(), what="the first host's command")
    proc.send_signal(signal.SIGINT)  # the first host's command waits for the FIFO meanwhile
    seen = ""
    while "interrupt: letting the steps in flight finish" not in seen:  # the interrupt was heard
        line = proc.stderr.readline()
        assert line, f"playbook exited before acknowledging the interrupt: {seen}"
        seen += line
    with open(sshd_fleet[0].data_dir / "sigint-done.go", "w") as fh:
        fh.write("go\n")
    rest, err = proc.communicate(timeout=120)
    events += [json.loads(line) for line in rest.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    finished = {e["host"]: e for e in events if e["event"] == "step_finished"}
    first = sshd_fleet.names[0]
    assert finished[first]["status"] == "changed"
    assert (sshd_fleet[0].data_dir / "sigint-done").exists()
    for name in sshd_fleet.names[1:]:
        assert finished[name]["status"] == "skipped"
        assert "interrupted" in finished[name]["message"]
    assert not (sshd_fleet[1].data_dir / "sigint-done").exists()
    assert not (sshd_fleet[1].data_dir / "sigint-done.started").exists()
    assert "Traceback" not in err


def test_connections_opened_early_are_closed_when_a_check_fails(sshd_fleet, inventory, tmp_path, capsys, monkeypatch):
    """The CLI starts the SSH handshakes before the template checks; an undefined variable still
    stops the run before anything runs anywhere, and every connection opened is closed."""
    from engine import api

    pools = []
    real = api.open_early

    def spy(*a, **kw):
        pool = real(*a, **kw)
        pools.append(pool)
        return pool

    monkeypatch.setattr(api, "open_early", spy)
    pb = write_playbook(tmp_path / "pb.yml", MARK)  # run_tag is not given: undefined
    before = {h.name: sorted(os.listdir(h.data_dir)) for h in sshd_fleet}
    assert main(["run", str(pb), "-i", str(inventory), "--state-dir", str(tmp_path / "state")]) == 1
    assert "undefined variable 'run_tag'" in capsys.readouterr().err
    assert len(pools) == 1 and pools[0] is not None and pools[0].opened() == {}
    assert {h.name: sorted(os.listdir(h.data_dir)) for h in sshd_fleet} == before

    # and a valid run uses the connections opened early: one per host, all closed at the end
    assert (
        main(["run", str(pb), "-i", str(inventory), "-e", "run_tag=early", "--state-dir", str(tmp_path / "state")]) == 0
    )
    assert pools[1].opened() == {}
    for h in sshd_fleet:
        assert (h.data_dir / "marker-early").read_text().strip() == h.name
