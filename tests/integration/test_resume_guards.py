"""Resume never mixes two trees under one release (issue 14, item 2): against the real sshd fleet
and real rsync, through the CLI."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
import yaml

from engine.cli import main

pytestmark = pytest.mark.fleet

PLAYBOOK = Path(__file__).resolve().parents[2] / "playbooks" / "deploy-smartweb.yml"


def make_tree(root: Path, text: str = "v1") -> None:
    for i in range(20):
        p = root / f"app/f{i:02d}.php"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"<?php // {text} {i}\n")
        os.utime(p, (1_700_000_000, 1_700_000_000))


@pytest.fixture
def setup(fleet_factory, tmp_path):
    fleet = fleet_factory(3)
    tree = tmp_path / "tree"
    make_tree(tree)
    inv_path = fleet.write_inventory(tmp_path / "inv.yml")
    inv = yaml.safe_load(inv_path.read_text())
    for host in inv["hosts"].values():
        host["vars"]["app_root"] = f"{host['vars']['root']}/app"
    inv_path.write_text(yaml.safe_dump(inv))
    state = tmp_path / "state"
    flush = json.dumps({"cache_flush_command": ["sh", "-c", "echo flushed >> {{ app_root }}/flushes"]})
    base = ["-i", str(inv_path), "-e", f"smartweb_tree={tree}", "--state-dir", str(state), "-e", flush]
    return fleet, tree, base, state


def cli(capsys, *args: str) -> tuple[int, dict, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in out + err
    return code, json.loads(out) if out.strip().startswith("{") else {}, err


def source_digest(doc: dict) -> str:
    return next(r for r in doc["results"] if r["step"] == "sources.code")["outputs"]["digest"]


def runs(state: Path) -> int:
    return sqlite3.connect(state / "history.sqlite").execute("SELECT count(*) FROM runs").fetchone()[0]


def test_resume_after_the_source_changed_is_refused_naming_it_and_both_digests(setup, capsys):
    fleet, tree, base, state = setup
    fleet.stop_host(1)  # batch 1 (host01, host02): host02 is down, the budget stops the rollout
    code, first, _ = cli(capsys, "run", str(PLAYBOOK), *base, "--format", "json")
    assert code == 1
    deployed = Path(fleet[0].data_dir) / "app" / "current"
    release = os.readlink(deployed)
    before = source_digest(first)
    fleet.start_host(1)

    (tree / "app/f03.php").write_text("<?php // a hotfix committed meanwhile\n")  # the tree moved on
    _, fresh, _ = cli(capsys, "plan", str(PLAYBOOK), *base, "--format", "json")
    after = source_digest(fresh)
    assert before != after
    recorded = runs(state)

    code, _, err = cli(capsys, "run", str(PLAYBOOK), *base, "--resume", first["run_id"])
    assert code == 1
    assert "source 'code'" in err and before in err and after in err, err
    assert runs(state) == recorded  # refused before anything ran: not even a run was recorded
    assert os.readlink(deployed) == release  # the deployed host keeps its release...
    assert "hotfix" not in (deployed / "app/f03.php").read_text()
    for h in list(fleet)[1:]:  # ...and the rest got nothing from the other tree
        assert not (Path(h.data_dir) / "app" / "current").exists(), h.name

    make_tree(tree)  # the tree of the run, checked out again: the resume completes it
    code, _, err = cli(capsys, "run", str(PLAYBOOK), *base, "--resume", first["run_id"])
    assert code == 0, err
    assert {os.readlink(Path(h.data_dir) / "app" / "current") for h in fleet} == {release}


def test_resuming_a_finished_run_does_nothing_and_says_so(setup, capsys):
    fleet, tree, base, state = setup
    code, first, _ = cli(capsys, "run", str(PLAYBOOK), *base, "--format", "json")
    assert code == 0
    recorded = runs(state)
    flushes = {h.name: (Path(h.data_dir) / "app" / "flushes").read_text() for h in fleet}
    code, doc, err = cli(capsys, "run", str(PLAYBOOK), *base, "--resume", first["run_id"][:6])
    assert code == 0
    assert f"run {first['run_id']} already finished" in err and "nothing to resume" in err, err
    assert runs(state) == recorded  # nothing ran: no run recorded either
    assert flushes == {h.name: (Path(h.data_dir) / "app" / "flushes").read_text() for h in fleet}
