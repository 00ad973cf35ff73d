"""Sharded runs on the real sshd fleet: N shard processes at once, then the coordinator.

The shards of one run together cover the fleet exactly once, deploy what an unsharded run
deploys, host for host, and the step that runs once (a `helm_bump` push to a real bare git
remote) is pushed once, by the coordinator. A shard killed mid-run resumes its own part only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.gitrepo import GitRemote

pytestmark = pytest.mark.fleet

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "20261202T120000Z"

PLAYBOOK = """\
name: sharded
sources:
  code: {type: local, path: "{{ tree }}"}
fleets:
  web: {hosts: web, serial: 2}
steps:
  - id: sync
    module: rsync
    fleet: web
    args: {src: "{{ sources.code.path }}", dest: "{{ root }}/app", releases: true}
  - id: hold
    module: command
    fleet: web
    needs: [sync]
    args:
      argv: [sh, -c, 'touch "$1/held"; while [ -e "$1/hold" ]; do sleep 0.05; done', sh, "{{ root }}"]
  - id: bump
    module: helm_bump
    needs: [hold]
    args:
      repo: "{{ gitops_repo }}"
      file: values.yaml
      key_path: image.tag
      tag: "{{ release_id }}"
      author_name: Deploy Bot
      author_email: bot@example.com
      message: "deploy {tag}"
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftovers():
    """A failed test leaves no playbook process behind."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def cli(*argv: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=str(ROOT),
    )
    _STARTED.append(proc)
    return proc


def finish(proc: subprocess.Popen) -> tuple[int, dict, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, (json.loads(out) if out.strip() else {}), err


def setup_run(fleet, tmp_path: Path, name: str, playbook: str = PLAYBOOK):
    tree = tmp_path / "tree"
    if not tree.exists():
        (tree / "app").mkdir(parents=True)
        for i in range(20):
            (tree / "app" / f"f{i:02d}.php").write_text(f"<?php // {i}\n")
    remote = GitRemote(tmp_path / f"git-{name}", {"values.yaml": "image:\n  tag: old  # bumped by playbook\n"})
    pb = tmp_path / "pb.yml"
    pb.write_text(playbook)
    inv = fleet.write_inventory(tmp_path / f"inv-{name}.yml")
    base = [
        "-i",
        str(inv),
        "-e",
        json.dumps({"tree": str(tree), "gitops_repo": remote.url}),
        "--state-dir",
        str(tmp_path / f"state-{name}"),
        "--release-id",
        RELEASE,
        "--format",
        "json",
    ]
    return str(pb), base, remote


def by_host(doc: dict) -> dict[tuple[str, str], str]:
    return {(r["step"], r["host"]): r["status"] for r in doc["results"] if r["host"]}


def test_shards_cover_the_fleet_once_and_the_push_happens_once(fleet_factory, tmp_path):
    fleet = fleet_factory(5)
    pb, base, remote = setup_run(fleet, tmp_path, "sharded")
    commits = remote.count()
    procs = [cli("run", pb, *base, "--shard", f"{i}/3", "--run-id", "r1") for i in (1, 2, 3)]
    docs = []
    for p in procs:
        rc, doc, err = finish(p)
        assert rc == 0, err
        docs.append(doc)
    hosts = [{h for (_, h) in by_host(d)} for d in docs]
    assert set().union(*hosts) == set(fleet.names)
    assert sum(len(h) for h in hosts) == len(fleet.names)  # disjoint
    assert all(r["step"] != "bump" for d in docs for r in d["results"])  # no shard pushes
    assert remote.count() == commits
    rc, coord, err = finish(cli("run", pb, *base, "--shard", "coordinator", "--run-id", "r1"))
    assert rc == 0, err
    assert [(r["step"], r["status"]) for r in coord["results"] if r["step"] == "bump"] == [("bump", "changed")]
    assert remote.count() == commits + 1
    assert f"tag: {RELEASE}" in remote.show("values.yaml")
    # a second coordinator of the same run pushes nothing more
    rc, again, err = finish(cli("run", pb, *base, "--shard", "coordinator", "--run-id", "r1"))
    assert rc == 0, err
    assert remote.count() == commits + 1

    # the same playbook unsharded on a twin fleet: the same result, host for host
    twin = fleet_factory(5)
    tpb, tbase, tremote = setup_run(twin, tmp_path, "plain")
    rc, plain, err = finish(cli("run", tpb, *tbase))
    assert rc == 0, err
    sharded = {}
    for d in docs:
        sharded.update(by_host(d))
    assert sharded == by_host(plain)
    for a, b in zip(fleet, twin):
        assert os.readlink(Path(a.data_dir) / "app" / "current") == os.readlink(Path(b.data_dir) / "app" / "current")
        assert os.readlink(Path(a.data_dir) / "app" / "current") == f"releases/{RELEASE}"
    assert tremote.count() == commits + 1


def test_a_killed_shard_resumes_only_its_unfinished_host_steps(fleet_factory, tmp_path):
    fleet = fleet_factory(4)
    pb, base, remote = setup_run(fleet, tmp_path, "killed")
    held = Path(fleet[0].data_dir)
    (held / "hold").write_text("")  # host01 waits in `hold` until this file goes
    from engine.execute.shard import assign

    shard = assign(fleet.names, 2)[fleet.names[0]]
    proc = cli("run", pb, *base, "--shard", f"{shard}/2", "--run-id", "r2")
    deadline = time.monotonic() + 240
    while not (held / "held").exists():  # the event: host01 is inside its `hold` step
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the shard never reached the hold step"
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    (held / "hold").unlink()
    rc, doc, err = finish(cli("run", pb, *base, "--shard", f"{shard}/2", "--resume", "r2"))
    assert rc == 0, err
    mine = {h for h, i in assign(fleet.names, 2).items() if i == shard}
    assert {r["host"] for r in doc["results"] if r["host"]} == mine
    redone = {(r["step"], r["host"]) for r in doc["results"] if not r["message"].startswith("done in run")}
    assert ("hold", fleet.names[0]) in redone
    assert ("sync", fleet.names[0]) not in redone  # finished before the kill: not redone
    # the coordinator refuses while the other shard has not run
    rc, _, err = finish(cli("run", pb, *base, "--shard", "coordinator", "--run-id", "r2"))
    assert rc == 1 and "never started" in err, err


def test_a_saved_plan_applied_in_shards_then_finalized(fleet_factory, tmp_path):
    fleet = fleet_factory(3)
    pb, base, remote = setup_run(fleet, tmp_path, "applied")
    plan = tmp_path / "plan.json"
    rc, _, err = finish(cli("plan", pb, *base, "-o", str(plan)))
    assert rc == 2, err
    state = base[base.index("--state-dir") + 1]
    common = ["--state-dir", state, "--format", "json"]
    procs = [cli("apply", str(plan), *common, "--shard", f"{i}/2") for i in (1, 2)]
    hosts = []
    for p in procs:
        rc, doc, err = finish(p)
        assert rc == 0, err
        hosts.append({r["host"] for r in doc["results"] if r["host"]})
    assert hosts[0] | hosts[1] == set(fleet.names) and not hosts[0] & hosts[1]
    commits = remote.count()
    rc, doc, err = finish(cli("apply", str(plan), *common, "--shard", "coordinator"))
    assert rc == 0, err
    assert [r["status"] for r in doc["results"] if r["step"] == "bump"] == ["changed"]
    assert remote.count() == commits + 1
    saved = json.loads(plan.read_text())
    for h in fleet:
        assert os.readlink(Path(h.data_dir) / "app" / "current") == f"releases/{saved['release_id']}"


def test_a_source_that_changed_between_shards_is_refused(fleet_factory, tmp_path):
    fleet = fleet_factory(2)
    pb, base, _remote = setup_run(fleet, tmp_path, "moved")
    rc, first, err = finish(cli("run", pb, *base, "--shard", "1/2", "--run-id", "r3"))
    assert rc == 0, err
    (tmp_path / "tree" / "app" / "f00.php").write_text("<?php // changed under the run\n")
    rc, _, err = finish(cli("run", pb, *base, "--shard", "2/2", "--run-id", "r3"))
    assert rc == 1 and "source 'code' is sha256:" in err and "changed while the shards started" in err, err
    deployed = {r["host"] for r in first["results"] if r["host"]}
    for h in fleet:  # the refused shard touched nothing
        if h.name not in deployed:
            assert not (Path(h.data_dir) / "app").exists()
