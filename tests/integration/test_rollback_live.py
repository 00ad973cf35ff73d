"""Rollback follows what is live, not what the run status says (issue 14, item 3): against the real
sshd fleet and real rsync, through the CLI and the API."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from engine import api
from engine.cli import main
from engine.execute.options import RunOptions
from engine.model.events import StepFinished
from engine.record.history import History

pytestmark = pytest.mark.fleet

PLAYBOOK = Path(__file__).resolve().parents[2] / "playbooks" / "deploy-smartweb.yml"
R1, R2, R3 = "20261101T000000Z", "20261102T000000Z", "20261103T000000Z"


def make_tree(root: Path, version: int) -> None:
    for i in range(20):
        p = root / f"app/f{i:02d}.php"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"<?php // v{version} {i}\n")
        os.utime(p, (1_700_000_000 + version, 1_700_000_000 + version))  # rsync compares size and mtime


@pytest.fixture
def setup(fleet_factory, tmp_path):
    fleet = fleet_factory(3)
    tree = tmp_path / "tree"
    make_tree(tree, 1)
    inv_path = fleet.write_inventory(tmp_path / "inv.yml")
    inv = yaml.safe_load(inv_path.read_text())
    for host in inv["hosts"].values():
        host["vars"]["app_root"] = f"{host['vars']['root']}/app"
    inv_path.write_text(yaml.safe_dump(inv))
    state = tmp_path / "state"
    extra = {"smartweb_tree": str(tree)}
    base = ["-i", str(inv_path), "--state-dir", str(state), "-e", json.dumps(extra)]
    pb = tmp_path / "pb.yml"
    pb.write_text(flushing(PLAYBOOK.read_text()))

    def options(**kw) -> RunOptions:
        return RunOptions(mode="run", state_dir=str(state), forks=kw.pop("forks", 10), extra_vars=extra, **kw)

    return fleet, tree, pb, base, options, state


def flushing(playbook: str) -> str:
    """The playbook, its cache flush writing the release it flushed for (a step output)."""
    step = 'command: "{{ cache_flush_command }}"'
    assert step in playbook
    return playbook.replace(step, 'command: [sh, -c, "echo {{ steps.sync.release_name }} >> {{ app_root }}/flushes"]')


def current(host) -> str:
    return os.readlink(Path(host.data_dir) / "app" / "current").removeprefix("releases/")


def flushes(host) -> list[str]:
    path = Path(host.data_dir) / "app" / "flushes"
    return path.read_text().split() if path.exists() else []


def cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in out + err
    return code, err


def deploy(pb, base, tree, capsys, version: int, release: str, *more: str) -> None:
    make_tree(tree, version)
    code, err = cli(capsys, "run", str(pb), *base, "--release-id", release, *more)
    assert code == 0, err


def interrupted_after_every_transfer(loaded, options, tree, fleet, release: str) -> None:
    """A deploy stopped (as by Ctrl-C) once the last host's sync finished: every host serves the
    new release, the run is recorded as interrupted and some cache flushes never ran."""
    make_tree(tree, 3)
    executors, synced = [], []

    def stop_after_the_last_sync(event):
        if isinstance(event, StepFinished) and event.result.step == "sync":
            synced.append(event.result.host)
            if len(synced) == len(fleet):
                executors[0].request_stop()

    cut = api.run(
        loaded, options(release_id=release), subscribers=[stop_after_the_last_sync], on_executor=executors.append
    )
    assert cut.interrupted and cut.exit_code() == 130
    assert {current(h) for h in fleet} == {release}


def test_after_an_interrupted_deploy_rollback_goes_to_the_release_before_the_live_one(setup, capsys):
    fleet, tree, pb, base, options, state = setup
    deploy(pb, base, tree, capsys, 1, R1)
    deploy(pb, base, tree, capsys, 2, R2)
    loaded = api.load(str(pb), base[1])
    interrupted_after_every_transfer(loaded, options, tree, fleet, R3)
    hist = History(str(state))
    try:
        assert hist.runs(loaded.playbook.name)[0].status == "interrupted"
    finally:
        hist.close()

    code, err = cli(capsys, "rollback", str(pb), *base, "--plan")
    assert code == 2 and f"{R3} -> {R2}" in err, err  # not two releases back
    assert {current(h) for h in fleet} == {R3}

    code, err = cli(capsys, "rollback", str(pb), *base, "--to", R2)  # not "already current"
    assert code == 0, err
    assert {current(h) for h in fleet} == {R2}
    assert f"moved 3 host(s) to {R2}" in err, err
    for h in fleet:  # the cache flush ran after the switch, with the target's recorded outputs
        assert flushes(h)[-1] == R2, (h.name, flushes(h))


def test_the_default_target_is_on_every_host_and_a_host_that_cannot_be_rolled_back_stops_all(setup, capsys):
    fleet, tree, pb, base, options, state = setup
    first, second, third = fleet.names
    deploy(pb, base, tree, capsys, 1, R1, "--limit", f"{first},{second}")  # host03 joined later
    deploy(pb, base, tree, capsys, 2, R2)
    flushed = {h.name: flushes(h) for h in fleet}

    code, err = cli(capsys, "rollback", str(pb), *base)
    assert code == 1
    assert f"no release older than {R2} is on every host" in err and f"{R1} is not on {third}" in err, err
    assert {current(h) for h in fleet} == {R2} and {h.name: flushes(h) for h in fleet} == flushed

    # asked for explicitly, R1 would have to be built again on host03 from the recorded tree,
    # which has moved on: that host cannot be rolled back, so no host is
    code, err = cli(capsys, "rollback", str(pb), *base, "--to", R1)
    assert code == 1
    assert third in err and "cannot be rebuilt" in err and "nothing was changed on any host" in err, err
    listed = [line for line in err.splitlines() if line.startswith("  ")]
    assert listed and all(third in line for line in listed), err  # only the host that cannot
    assert {current(h) for h in fleet} == {R2}
    assert {h.name: flushes(h) for h in fleet} == flushed

    # the hosts that can, with --limit: R1 there, host03 untouched
    code, err = cli(capsys, "rollback", str(pb), *base, "--to", R1, "--limit", f"!{third}")
    assert code == 0, err
    assert [current(h) for h in fleet] == [R1, R1, R2]
    assert f"moved 2 host(s) to {R1}: {first}, {second}" in err, err
    flushed = {h.name: flushes(h) for h in fleet}

    fleet.stop_host(1)  # what a host serves cannot be read: no host is touched
    code, err = cli(capsys, "rollback", str(pb), *base, "--to", R2, "--limit", f"!{third}")
    assert code == 1
    assert "could not be read" in err and second in err and "nothing was changed on any host" in err, err
    assert first not in err.split("could not be read", 1)[1], err
    assert current(fleet[0]) == R1 and flushes(fleet[0]) == flushed[first]


def test_a_host_failing_during_the_rollback_stops_it_and_the_report_names_who_moved(setup, capsys):
    fleet, tree, pb, base, options, state = setup
    pb.write_text(
        flushing(PLAYBOOK.read_text())
        .replace('serial: "50%"', "serial: 1")
        .replace("max_fail_percentage: 10", "max_fail_percentage: 50")  # the deploy's budget
    )
    deploy(pb, base, tree, capsys, 1, R1)
    deploy(pb, base, tree, capsys, 2, R2)
    loaded = api.load(str(pb), base[1])
    rb = api.prepare_rollback(loaded, options())  # the whole fleet planned: every host can go back
    assert (rb.plan.current, rb.plan.target) == (R2, R1)
    fleet.stop_host(1)  # host02 goes down between the plan and its turn
    summary = api.run(rb.loaded, rb.options)
    assert summary.exit_code() == 1
    assert [current(h) for h in fleet] == [R1, R2, R2]  # host03's turn never came
    report = api.rollback_report(rb, summary)
    assert report.moved == [fleet.names[0]] and report.failed == [fleet.names[1]]
    assert report.not_moved == [fleet.names[1], fleet.names[2]]
    text = str(report)
    assert f"rollback to {R1} stopped (a rollback stops at its first failure): {fleet.names[1]} failed" in text, text
    assert f"moved 1 host(s) to {R1}: {fleet.names[0]}" in text, text
    assert f"not moved: {fleet.names[1]} (still {R2}), {fleet.names[2]} (still {R2})" in text, text
