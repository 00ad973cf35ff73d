"""Saved plans, resume and secrets against the real sshd fleet, through the CLI."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
import yaml

from engine.cli import main
from engine.secrets import SCRUBBER

pytestmark = pytest.mark.fleet

PLAYBOOK = Path(__file__).resolve().parents[2] / "playbooks" / "deploy-smartweb.yml"


def make_tree(root: Path, n: int = 50) -> None:
    for i in range(n):
        p = root / f"app/f{i:02d}.php"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"<?php // {i}\n")
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
    base = [
        "-i",
        str(inv_path),
        "-e",
        f"smartweb_tree={tree}",
        "--state-dir",
        str(state),
        "-e",
        json.dumps({"cache_flush_command": ["true"]}),
    ]
    return fleet, tree, base, state


def test_apply_refuses_a_plan_when_a_host_drifted(setup, tmp_path, capsys):
    fleet, tree, base, _ = setup
    assert main(["run", str(PLAYBOOK), *base]) == 0
    (tree / "app/f01.php").write_text("<?php // new\n")
    plan = tmp_path / "plan.json"
    assert main(["plan", str(PLAYBOOK), *base, "-o", str(plan)]) == 2
    capsys.readouterr()
    edited = Path(fleet[1].data_dir) / "app" / "current" / "app" / "f07.php"
    edited.write_text("<?php // edited by hand on the server\n")
    assert main(["apply", str(plan), "--state-dir", base[base.index("--state-dir") + 1]]) == 1
    err = capsys.readouterr().err
    assert "refusing to apply" in err and fleet.names[1] in err and "sync" in err
    assert fleet.names[0] not in err.split("refusing")[1].split("\n", 1)[1]  # only the drifted host is listed
    for h in fleet:  # nothing was applied anywhere
        assert "new" not in (Path(h.data_dir) / "app/current/app/f01.php").read_text()


def test_apply_runs_exactly_the_reviewed_plan(setup, tmp_path, capsys):
    fleet, tree, base, state = setup
    plan = tmp_path / "plan.json"
    assert main(["plan", str(PLAYBOOK), *base, "-o", str(plan)]) == 2
    saved = json.loads(plan.read_text())
    capsys.readouterr()
    assert main(["apply", str(plan), "--state-dir", str(state), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    release = saved["release_id"]
    for h in fleet:
        assert os.readlink(Path(h.data_dir) / "app" / "current") == f"releases/{release}"
    assert {(r["step"], r["host"]) for r in doc["results"]} == {(n["step"], n["host"]) for n in saved["nodes"]}


def test_resume_completes_only_the_remainder(setup, capsys):
    fleet, tree, base, state = setup
    fleet.stop_host(1)
    assert main(["run", str(PLAYBOOK), *base, "--format", "json"]) == 1
    first = json.loads(capsys.readouterr().out)
    run_id = first["run_id"]
    down = fleet.names[1]
    assert {r["status"] for r in first["results"] if r["host"] == down} <= {"unreachable", "skipped"}
    fleet.start_host(1)
    assert main(["run", str(PLAYBOOK), *base, "--resume", run_id, "--format", "json"]) == 0
    second = json.loads(capsys.readouterr().out)
    finished = {(r["step"], r["host"]) for r in first["results"] if r["status"] in ("ok", "changed")}
    assert ("sync", fleet.names[0]) in finished  # some work did finish the first time...
    assert all(h != down for _, h in finished)
    for r in second["results"]:
        if (r["step"], r["host"]) in finished:  # ...and is not redone
            assert r["status"] == "ok" and r["message"] == f"done in run {run_id}", r
        else:  # everything else (the down host, and what the failure budget stopped) runs now
            assert r["status"] == "changed", r
    assert {r["host"] for r in second["results"] if r["status"] == "changed"} >= {down}
    # the resumed host got the same release id as the hosts the first run deployed
    names = {os.readlink(Path(h.data_dir) / "app" / "current") for h in fleet}
    assert len(names) == 1


def test_resume_refuses_a_changed_playbook(setup, tmp_path, capsys):
    fleet, tree, base, state = setup
    copy = tmp_path / "pb.yml"
    copy.write_text(PLAYBOOK.read_text())
    fleet.stop_host(2)
    assert main(["run", str(copy), *base, "--format", "json"]) == 1
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    fleet.start_host(2)
    copy.write_text(PLAYBOOK.read_text() + "\n# edited\n")
    assert main(["run", str(copy), *base, "--resume", run_id]) == 1
    assert "playbook changed since run" in capsys.readouterr().err


def test_a_secret_never_appears_in_any_output(setup, tmp_path, capsys, monkeypatch):
    fleet, tree, base, state = setup
    secret = "s3cr3t-Purge-Token-93f1"
    monkeypatch.setenv("PURGE_TOKEN", secret)
    pb = tmp_path / "pb.yml"
    pb.write_text(
        PLAYBOOK.read_text()
        .replace(
            "  cache_flush_command: [wp, cache, flush, --allow-root]",
            '  cache_flush_command: [wp, cache, flush, --allow-root]\n  token_file: "{{ app_root }}/token"',
        )
        .replace("steps:\n", "secrets:\n  purge_token: {env: PURGE_TOKEN}\n\nsteps:\n", 1)
        + """
  - id: use_secret
    module: command
    fleet: web
    needs: [flush_cache]
    args:
      shell: 'cat > "$TOKEN_FILE" && echo "token is $PURGE" && exit 3'
      env: {PURGE: "{{ purge_token }}", TOKEN_FILE: "{{ token_file }}"}
      stdin: "{{ purge_token }}"
      chdir: "{{ app_root }}"
"""
    )
    outputs = []
    for fmt in ("text", "json", "jsonl", "markdown"):
        main(["plan", str(pb), *base, "--format", fmt, "-v"])
        outputs.append("".join(capsys.readouterr()))
    plan_file = tmp_path / "plan.json"
    main(["plan", str(pb), *base, "-o", str(plan_file)])
    outputs.append("".join(capsys.readouterr()) + plan_file.read_text())
    for fmt in ("text", "json"):  # the step fails on purpose, echoing the secret to stdout
        assert main(["run", str(pb), *base, "--format", fmt, "-vvv"]) == 1
        outputs.append("".join(capsys.readouterr()))
    main(["history", "--state-dir", str(state), "--format", "json"])
    outputs.append("".join(capsys.readouterr()))
    db = sqlite3.connect(state / "history.sqlite")
    outputs.append(json.dumps(db.execute("SELECT * FROM results").fetchall()))
    outputs.append(json.dumps(db.execute("SELECT * FROM runs").fetchall()))
    everything = "\n".join(outputs)
    assert "********" in everything  # it was there to be masked...
    assert secret not in everything  # ...and never shown
    SCRUBBER.add(secret)


MIGRATION = """
  - id: add_orders_index
    module: migrate
    fleet: web
    needs: [sync]
    args:
      name: "2026_11_add_orders_index"
      up: 'echo "up {{ release_id }}" >> {{ (app_root ~ "/db.log") | quote }}'
      down: 'echo "down" >> {{ (app_root ~ "/db.log") | quote }}'
      ledger_dir: "{{ app_root }}/.migrations"   # the test hosts share one $HOME
"""


def test_rollback_across_a_migration_is_refused_then_done_with_migrations(setup, tmp_path, capsys):
    fleet, tree, base, state = setup
    pb = tmp_path / "pb.yml"
    pb.write_text(PLAYBOOK.read_text())
    assert main(["run", str(pb), *base, "--release-id", "20261101T000000Z"]) == 0
    (tree / "app/f03.php").write_text("<?php // release B\n")
    pb.write_text(PLAYBOOK.read_text() + MIGRATION)
    assert main(["run", str(pb), *base, "--release-id", "20261102T000000Z"]) == 0
    capsys.readouterr()
    for h in fleet:
        assert (Path(h.data_dir) / "app/db.log").read_text() == "up 20261102T000000Z\n"

    assert main(["rollback", str(pb), *base]) == 1
    err = capsys.readouterr().err
    assert "2026_11_add_orders_index" in err and "--with-migrations" in err
    for h in fleet:  # refused: nothing touched
        assert os.readlink(Path(h.data_dir) / "app/current") == "releases/20261102T000000Z"

    assert main(["rollback", str(pb), *base, "--with-migrations", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for name in fleet.names:  # on every host: the down migration first, then the switch
        order = [r["step"] for r in doc["results"] if r["host"] == name]
        assert order == ["migration_down_0", "rollback_sync", "rollback_flush_cache"], order  # caches cleared last
    for h in fleet:
        root = Path(h.data_dir) / "app"
        assert os.readlink(root / "current") == "releases/20261101T000000Z"
        assert (root / "db.log").read_text() == "up 20261102T000000Z\ndown\n"
        assert "release B" not in (root / "current/app/f03.php").read_text()
    # the rollback is recorded: history's current release is the old one again, and a second
    # rollback has nothing newer to undo than ... the release we left
    assert main(["history", "--state-dir", str(state), "--format", "json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert runs[0]["release_id"] == "20261101T000000Z" and runs[0]["status"] == "ok"


def test_rollback_rebuilds_a_removed_release_only_from_the_same_local_tree(setup, tmp_path, capsys):
    fleet, tree, base, _ = setup
    pb = tmp_path / "pb.yml"
    pb.write_text(PLAYBOOK.read_text().replace("keep: 5", "keep: 2"))
    for n in (1, 2, 3):
        (tree / "app/f03.php").write_text(f"<?php // release {n}\n")
        os.utime(tree / "app/f03.php", (1_700_000_000 + n, 1_700_000_000 + n))  # rsync's quick check sees it
        assert main(["run", str(pb), *base, "--release-id", f"2026110{n}T000000Z"]) == 0
    capsys.readouterr()
    first = "20261101T000000Z"
    for h in fleet:
        assert sorted(os.listdir(Path(h.data_dir) / "app/releases")) == ["20261102T000000Z", "20261103T000000Z"]

    # the code tree has moved on (release 3): it cannot stand in for release 1 anywhere, and the
    # rollback, planned on the whole fleet first, is refused before any host is touched
    assert main(["rollback", str(pb), *base, "--to", first, "--format", "json"]) == 1
    out, err = capsys.readouterr()
    assert "3 host(s) cannot be rolled back, so nothing was changed on any host" in err, err
    assert json.loads(out)["errors"][0]["message"] in err  # --format json: the error as JSON too
    assert "cannot be rebuilt" in err and "local source now gives" in err
    for h in fleet:
        assert f"  {h.name}  rollback_sync: failed" in err
        assert os.readlink(Path(h.data_dir) / "app/current") == "releases/20261103T000000Z"

    # the tree checked out at release 1 again: the release is rebuilt, shared paths linked as before
    (tree / "app/f03.php").write_text("<?php // release 1\n")
    os.utime(tree / "app/f03.php", (1_700_000_001, 1_700_000_001))
    assert main(["rollback", str(pb), *base, "--to", first, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for h in fleet:
        root = Path(h.data_dir) / "app"
        assert os.readlink(root / "current") == f"releases/{first}"
        assert (root / "current/app/f03.php").read_text() == "<?php // release 1\n"
        assert os.path.islink(root / "current/wp-content/uploads")
        assert next(r for r in doc["results"] if r["step"] == "rollback_sync" and r["host"] == h.name)["outputs"][
            "rebuilt"
        ]
