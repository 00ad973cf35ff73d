"""Sharded runs with the shared state backend in moto's S3 server, on the real sshd fleet.

The shards run as separate processes with nothing in common but the bucket (each its own state
directory): the lock, the history and the journals are in S3, `playbook history --state` reads
them, two coordinators racing get one lock, and a killed shard resumes from the S3 journal.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.test_shards import PLAYBOOK, RELEASE, _no_leftovers, cli, finish, setup_run

pytestmark = pytest.mark.fleet
__all__ = ["_no_leftovers"]  # the autouse fixture, imported to apply here too

GATED = (
    PLAYBOOK
    + """\
  - id: gate
    module: command
    fleet: controller
    needs: [bump]
    args:
      argv: [sh, -c, 'touch "$1/gate-held"; while [ -e "$1/gate" ]; do sleep 0.05; done', sh, "{{ gate_dir }}"]
"""
)


@pytest.fixture
def state(moto_s3):
    import boto3

    bucket = f"deploy-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/prod?endpoint_url={moto_s3}", bucket


def _wait_for(path: Path, proc, what: str) -> None:
    deadline = time.monotonic() + 240
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)


def test_shards_and_racing_coordinators_share_state_in_s3(fleet_factory, tmp_path, state):
    url, _bucket = state
    fleet = fleet_factory(4)
    pb, base, remote = setup_run(fleet, tmp_path, "s3", GATED)
    gate = tmp_path / "gatedir"
    gate.mkdir()
    base += ["-e", json.dumps({"gate_dir": str(gate)}), "--state", url]
    state_dir = base.index("--state-dir") + 1
    procs = []
    for i in (1, 2):
        argv = list(base)
        argv[state_dir] = str(tmp_path / f"own-state-{i}")  # nothing local in common
        procs.append(cli("run", pb, *argv, "--shard", f"{i}/2", "--run-id", "r1"))
    hosts = []
    for p in procs:
        rc, doc, err = finish(p)
        assert rc == 0, err
        hosts.append({r["host"] for r in doc["results"] if r["host"]})
    assert hosts[0] | hosts[1] == set(fleet.names) and not hosts[0] & hosts[1]

    commits = remote.count()
    (gate / "gate").write_text("")  # the first coordinator waits in `gate`, holding the lock
    first = cli("run", pb, *base, "--shard", "coordinator", "--run-id", "r1")
    _wait_for(gate / "gate-held", first, "the first coordinator in its gate step")
    rc, _, err = finish(cli("run", pb, *base, "--shard", "coordinator", "--run-id", "r1"))
    assert rc == 1 and "part coord of run r1 is already running" in err, err
    (gate / "gate").unlink()
    rc, doc, err = finish(first)
    assert rc == 0, err
    assert remote.count() == commits + 1  # one push, by the one coordinator that ran

    # the history, from anywhere: a fresh state dir, only the bucket
    rc, out, err = finish(cli("history", "--state", url, "--format", "json", "--state-dir", str(tmp_path / "empty")))
    assert rc == 0, err
    parts = {r["run_id"]: r for r in out}
    assert set(parts) == {"r1.s1of2", "r1.s2of2", "r1.coord"}
    assert {r["status"] for r in parts.values()} == {"ok"} and {r["release_id"] for r in parts.values()} == {RELEASE}


def test_a_killed_shard_resumes_from_the_s3_journal(fleet_factory, tmp_path, state):
    url, _bucket = state
    fleet = fleet_factory(2)
    pb, base, _remote = setup_run(fleet, tmp_path, "s3kill")
    base += ["--state", url]
    held = Path(fleet[0].data_dir)
    (held / "hold").write_text("")
    from engine.execute.shard import assign
    from engine.record.state import open_history

    shard = assign(fleet.names, 2)[fleet.names[0]]
    proc = cli("run", pb, *base, "--shard", f"{shard}/2", "--run-id", "r9")
    _wait_for(held / "held", proc, "host01 in its hold step")
    hist = open_history(url, "")
    deadline = time.monotonic() + 120
    while not any(r["step"] == "sync" for r in hist.results(f"r9.s{shard}of2")):  # the journal has it
        assert time.monotonic() < deadline, "sync never reached the journal"
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    (held / "hold").unlink()
    rc, _, err = finish(cli("run", pb, *base, "--shard", f"{shard}/2", "--resume", "r9"))
    assert rc == 1 and "already running" in err, err  # its lease outlives the kill...
    breaker = cli("lock", "break", pb, "-i", base[1], "--state", url)
    out, err = breaker.communicate(timeout=120)
    assert breaker.returncode == 0 and "web: broken (was " in out and "run r9" in out, (out, err)
    rc, doc, err = finish(cli("run", pb, *base, "--shard", f"{shard}/2", "--resume", "r9"))
    assert rc == 0, err  # ...until broken
    redone = {(r["step"], r["host"]) for r in doc["results"] if not r["message"].startswith("done in run")}
    assert ("hold", fleet.names[0]) in redone and ("sync", fleet.names[0]) not in redone


def test_sigterm_releases_the_s3_lock(fleet_factory, tmp_path, state):
    import signal

    from engine.record.state import open_history, open_store, state_url
    from engine.record.state.s3lock import lock_status

    url, _bucket = state
    fleet = fleet_factory(1)
    pb, base, _remote = setup_run(fleet, tmp_path, "term")
    base += ["--state", url]
    held = Path(fleet[0].data_dir)
    (held / "hold").write_text("")
    proc = cli("run", pb, *base)
    _wait_for(held / "held", proc, "the run in its hold step")
    store = open_store(state_url(url))
    holder = lock_status(store, "web")
    assert holder is not None and holder["playbook"] == pb
    proc.send_signal(signal.SIGTERM)  # in-flight steps finish, nothing new starts, the lock goes
    (held / "hold").unlink()
    rc, doc, err = finish(proc)
    assert rc != 0 and doc["interrupted"] is True, err
    assert lock_status(store, "web") is None
    [rec] = open_history(url, "").runs()
    assert rec.status == "interrupted"
