"""A host's SSH connection closes once the host has nothing left to run, not at the end of the run.

So a fleet's teardown (each sshd's session end) overlaps the hosts still working instead of
following the slowest of them, and a finished host's sshd is free at once. A host whose deploy
lock is released at the end of the run keeps its connection until then: one handshake per host.
Counted where it happens: the per-connection children each sshd listener has forked.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from tests.harness.sshd import _children_map

pytestmark = pytest.mark.fleet

PLAYBOOK = """\
    name: release
    fleets:
      fast: {{hosts: fast, lock: {lock}}}
      slow: {{hosts: slow, lock: {lock}}}
    steps:
      - {{id: quick, module: command, fleet: fast, args: {{argv: ["true"]}}}}
      - id: wait
        module: command
        fleet: slow
        args:
          argv: [sh, -c, 'touch "$1"; while [ ! -e "$2" ]; do sleep 0.05; done', sh, "{{{{ root }}}}/started", "{{{{ root }}}}/go"]
    """


def _sessions(fleet, i: int) -> int:
    """How many connections host `i`'s sshd is serving (its forked per-connection children)."""
    return len(_children_map().get(fleet[i].pid, []))


def _wait_for(what, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.02)
    return False


def _start(fleet, tmp_path, *, lock: bool) -> subprocess.Popen:
    inv = fleet.write_inventory(tmp_path / "inv.yml")
    doc = yaml.safe_load(inv.read_text())
    doc["groups"] = {"fast": {"hosts": [fleet.names[0]]}, "slow": {"hosts": [fleet.names[1]]}}
    inv.write_text(yaml.safe_dump(doc))
    pb = tmp_path / "pb.yml"
    pb.write_text(textwrap.dedent(PLAYBOOK.format(lock=str(lock).lower())))
    argv = [sys.executable, "-m", "engine.cli", "run", str(pb), "-i", str(inv), "--state-dir", str(tmp_path / "s")]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("lock", [False, True], ids=["no lock", "lock"])
def test_a_finished_host_is_disconnected_while_another_still_runs(lock, fleet_factory, tmp_path):
    fleet = fleet_factory(2)
    started, go = fleet[1].data_dir / "started", fleet[1].data_dir / "go"
    proc = _start(fleet, tmp_path, lock=lock)
    try:
        deadline = time.monotonic() + 120
        assert _wait_for(started.exists, deadline), "the slow host's step never started"
        assert _sessions(fleet, 1) == 1
        if lock:  # the fast host's lock is released at the end, over the connection it has
            assert _sessions(fleet, 0) == 1
        else:
            assert _wait_for(lambda: _sessions(fleet, 0) == 0, deadline), "the finished host is still connected"
        assert proc.poll() is None  # still running: the slow host waits for `go`
        go.touch()
        out, err = proc.communicate(timeout=120)
    finally:
        go.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    assert _wait_for(lambda: _sessions(fleet, 0) + _sessions(fleet, 1) == 0, time.monotonic() + 120)
