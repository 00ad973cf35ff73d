"""The Python API alone does what `playbook` does: a recorded run, a resume and a rollback,
against the real sshd fleet, with no CLI in the way (engine/api/)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from engine import api
from engine.execute.options import RunOptions
from engine.model.events import StepFinished
from engine.record.deployed import last_deployed
from engine.record.history import History

pytestmark = pytest.mark.fleet

PLAYBOOK = Path(__file__).resolve().parents[2] / "playbooks" / "deploy-smartweb.yml"


def make_tree(root: Path, version: int) -> None:
    for i in range(20):
        p = root / f"app/f{i:02d}.php"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"<?php // v{version} {i}\n")
        os.utime(p, (1_700_000_000 + version, 1_700_000_000 + version))  # rsync compares size and mtime


@pytest.fixture
def setup(fleet_factory, tmp_path):
    fleet = fleet_factory(3)
    inv_path = fleet.write_inventory(tmp_path / "inv.yml")
    inv = yaml.safe_load(inv_path.read_text())
    for host in inv["hosts"].values():
        host["vars"]["app_root"] = f"{host['vars']['root']}/app"
    inv_path.write_text(yaml.safe_dump(inv))
    tree = tmp_path / "tree"
    make_tree(tree, 1)
    loaded = api.load(str(PLAYBOOK), str(inv_path))
    state = str(tmp_path / "state")

    def options(**kw):
        return RunOptions(
            mode="run",
            state_dir=state,
            forks=kw.pop("forks", 10),
            extra_vars={"smartweb_tree": str(tree), "cache_flush_command": ["true"]},
            **kw,
        )

    return fleet, tree, loaded, state, options


def current(host) -> str:
    return os.readlink(Path(host.data_dir) / "app" / "current")


def test_recorded_run_resume_and_rollback_through_the_api(setup):
    fleet, tree, loaded, state, options = setup

    first = api.run(loaded, options(release_id="r1"))
    assert first.exit_code() == 0
    assert {current(h) for h in fleet} == {"releases/r1"}
    hist = History(state)
    try:
        rec = hist.run(first.run_id)
        assert rec is not None and rec.status == "ok" and rec.release_id == "r1"
        assert {(r["step"], r["host"]) for r in hist.results(first.run_id)} >= {("sync", h) for h in fleet.names}
    finally:
        hist.close()
    assert last_deployed(state, loaded.playbook.name, "code")["run_id"] == first.run_id

    # an interrupted run: stop once the first host's sync is done (one host at a time)
    make_tree(tree, 2)
    executors = []

    def stop_after_first_sync(event):
        if isinstance(event, StepFinished) and event.result.step == "sync":
            executors[0].request_stop()

    cut = api.run(
        loaded, options(release_id="r2", forks=1), subscribers=[stop_after_first_sync], on_executor=executors.append
    )
    assert cut.interrupted and cut.exit_code() == 130
    moved = [h for h in fleet if current(h) == "releases/r2"]
    assert len(moved) == 1

    resumed_opts = options()
    api.prepare_resume(loaded, resumed_opts, cut.run_id)
    assert resumed_opts.release_id == "r2" and resumed_opts.resumed_from == cut.run_id
    resumed = api.run(loaded, resumed_opts)
    assert resumed.exit_code() == 0
    assert {current(h) for h in fleet} == {"releases/r2"}
    redone = {r.host for r in resumed.results if r.step == "sync" and r.status.value == "changed"}
    assert redone == set(fleet.names) - {moved[0].name}  # the finished host was not synced again

    # and back: the rollback is planned from the history and recorded like any run
    rb = api.prepare_rollback(loaded, options(), to="r1")
    assert (rb.plan.current, rb.plan.target) == ("r2", "r1")
    back = api.run(rb.loaded, rb.options)
    assert back.exit_code() == 0
    assert {current(h) for h in fleet} == {"releases/r1"}
    hist = History(state)
    try:
        assert [r.release_id for r in hist.runs(loaded.playbook.name)][:1] == ["r1"]
    finally:
        hist.close()


def test_a_plan_is_saved_and_applied_through_the_api(setup, tmp_path):
    fleet, tree, loaded, state, options = setup
    plan_opts = options()
    plan_opts.mode = "plan"
    summary = api.run(loaded, plan_opts)
    assert summary.exit_code() == 2
    path = str(tmp_path / "plan.json")
    api.save_plan(path, summary, loaded, plan_opts, secret_names=set())
    assert json.loads(Path(path).read_text())["release_id"] == plan_opts.release_id
    ready = api.prepare_apply(path, state_dir=state)
    applied = api.run(ready.loaded, ready.options, plan_hash=ready.plan_hash)
    assert applied.exit_code() == 0
    assert {current(h) for h in fleet} == {f"releases/{plan_opts.release_id}"}
    hist = History(state)
    try:
        assert hist.run(applied.run_id).plan_hash == ready.plan_hash
    finally:
        hist.close()


def test_two_runs_in_one_second_get_different_releases(setup, monkeypatch):
    """A release id is the UTC second; a second run within that second must not write into the
    first one's (live) release directory."""
    fleet, tree, loaded, state, options = setup
    monkeypatch.setattr(api.ids, "new_release_id", lambda: "20261202T120000Z")
    assert api.run(loaded, options()).exit_code() == 0
    assert {current(h) for h in fleet} == {"releases/20261202T120000Z"}
    first = {h.name: (Path(h.data_dir) / "app/releases/20261202T120000Z/app/f00.php").read_text() for h in fleet}
    make_tree(tree, 2)
    second = options()
    assert api.run(loaded, second).exit_code() == 0
    assert second.release_id == "20261202T120000Z-2"
    assert {current(h) for h in fleet} == {"releases/20261202T120000Z-2"}
    for h in fleet:  # the first release is as it was: nothing was written into it
        assert (Path(h.data_dir) / "app/releases/20261202T120000Z/app/f00.php").read_text() == first[h.name]
