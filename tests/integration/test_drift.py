"""`playbook drift` (issue 18, item 1) against the real sshd fleet and real rsync: no drift right
after a run; a file edited, a file added and `current` switched by hand are named per host, path
and what differs (exit 2); an unreachable host is an error (exit 1); JSON and Markdown; and drift
itself changes nothing on any host."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

from engine.cli import main

pytestmark = pytest.mark.fleet

R1, R2 = "20261101T000000Z", "20261102T000000Z"

PLAYBOOK = """\
name: drift-demo
fleets:
  web: {hosts: all}
steps:
  - id: sync
    module: rsync
    fleet: web
    args:
      src: "{{ tree }}"
      dest: "{{ root }}/app"
      releases: true
      shared: [uploads]
      exclude: ["*.log"]
"""


def make_tree(root: Path, version: int) -> None:
    for i in range(12):
        p = root / f"lib/f{i:02d}.php"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"<?php // v{version} {i}\n")
        os.utime(p, (1_700_000_000 + version, 1_700_000_000 + version))


def snapshot(host) -> dict[str, str]:
    """Every path under the host's deploy root with its kind, mode, mtime and content hash."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(host.data_dir):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if os.path.islink(full):
                what = "l " + os.readlink(full)
            elif os.path.isfile(full):
                what = f"f {st.st_mode:o} {st.st_mtime_ns} " + hashlib.sha256(Path(full).read_bytes()).hexdigest()
            else:
                what = f"d {st.st_mode:o}"
            out[os.path.relpath(full, host.data_dir)] = what
    return out


@pytest.fixture
def setup(fleet_factory, tmp_path):
    fleet = fleet_factory(3)
    tree = tmp_path / "tree"
    make_tree(tree, 1)
    inv = fleet.write_inventory(tmp_path / "inv.yml")
    pb = tmp_path / "pb.yml"
    pb.write_text(PLAYBOOK)
    base = ["-i", str(inv), "--state-dir", str(tmp_path / "state"), "-e", json.dumps({"tree": str(tree)})]
    return fleet, tree, pb, base, inv


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in out + err, out + err
    return code, out, err


def test_drift_names_host_path_and_what_differs_and_changes_nothing(setup, capsys):
    fleet, tree, pb, base, _inv = setup
    make_tree(tree, 1)
    assert cli(capsys, "run", str(pb), *base, "--release-id", R1)[0] == 0
    make_tree(tree, 2)
    assert cli(capsys, "run", str(pb), *base, "--release-id", R2)[0] == 0
    make_tree(tree, 3)  # the source moved on since: that is not drift

    code, out, err = cli(capsys, "drift", str(pb), *base)
    assert code == 0, out + err
    assert "no drift: 3 host(s)" in out

    h1, h2, h3 = fleet
    app1, app2 = Path(h1.data_dir) / "app", Path(h2.data_dir) / "app"
    (app1 / "current/lib/f03.php").write_text("<?php // hot fix\n")  # edited in place, on one host
    (app1 / "current/lib/new.php").write_text("<?php\n")  # added
    (app1 / "current/debug.log").write_text("excluded: not drift\n")
    (app1 / "shared/uploads/photo.jpg").write_text("shared: not drift\n")
    os.remove(app2 / "current")
    os.symlink(f"releases/{R1}", app2 / "current")  # switched back by hand
    before = {h.name: snapshot(h) for h in fleet}

    code, out, err = cli(capsys, "drift", str(pb), *base)
    assert code == 2, out + err
    assert f"{h1.name}  sync: drift" in out and f"{h2.name}  sync: drift" in out
    assert h3.name not in out.split("\n", 1)[0] and f"{h3.name}  sync" not in out
    assert "~ lib/f03.php  size" in out, out
    assert "+ lib/new.php" in out and "debug.log" not in out and "photo.jpg" not in out, out
    assert f"current is releases/{R1}, the history says releases/{R2}" in out, out
    assert "2 of 3 host(s) drifted" in out

    code, out, _ = cli(capsys, "drift", str(pb), *base, "--format", "json")
    assert code == 2
    doc = json.loads(out)
    assert doc["drifted"] == [h1.name, h2.name] and doc["errors"] == [] and doc["exit_code"] == 2
    by_host = {h["host"]: h for h in doc["hosts"]}
    found = {(f["what"], f["path"]) for f in by_host[h1.name]["findings"]}
    assert found == {("changed", "lib/f03.php"), ("added", "lib/new.php")}, found
    changed = next(f for f in by_host[h1.name]["findings"] if f["what"] == "changed")
    assert "size 14 -> 17" in changed["detail"] and "mtime" in changed["detail"], changed
    assert by_host[h2.name]["live_release"] == R1 and by_host[h2.name]["recorded"]["release"] == R2
    assert by_host[h3.name]["status"] == "ok"

    code, out, _ = cli(capsys, "drift", str(pb), *base, "--format", "markdown")
    assert code == 2
    assert out.startswith("## Drift: drift-demo\n")
    assert f"### {h1.name} (sync)" in out and "- **changed** `lib/f03.php`: size 14 -> 17" in out, out
    assert f"| {h3.name} | sync | ok | release {R2} by run " in out, out

    assert {h.name: snapshot(h) for h in fleet} == before  # drift wrote nothing anywhere


def test_an_unreachable_host_is_an_error_and_a_host_never_deployed_is_drift(setup, capsys, tmp_path):
    fleet, tree, pb, base, inv = setup
    first, second, third = fleet.names
    assert cli(capsys, "run", str(pb), *base, "--release-id", R1, "--limit", f"{first},{second}")[0] == 0

    code, out, _ = cli(capsys, "drift", str(pb), *base, "--format", "json")
    assert code == 2
    doc = json.loads(out)
    assert doc["drifted"] == [third]
    assert [f["what"] for f in doc["hosts"][2]["findings"]] == ["unrecorded"]

    code, out, _ = cli(capsys, "drift", str(pb), *base, "--limit", f"{first},{second}")
    assert code == 0, out

    fleet.stop_host(1)
    code, out, err = cli(capsys, "drift", str(pb), *base, "--limit", f"{first},{second}")
    assert code == 1, out + err
    assert f"{second}  sync: error" in out and "unreachable" in out, out
    assert f"1 could not be read ({second})" in out


def test_a_playbook_without_rsync_steps_has_nothing_to_drift(tmp_path, capsys):
    pb = tmp_path / "pb.yml"
    pb.write_text(
        "name: none\nfleets: {web: {hosts: all}}\nsteps:\n  - {id: hi, module: command, fleet: web, args: {argv: ['true']}}\n"
    )
    inv = tmp_path / "inv.yml"
    inv.write_text(yaml.safe_dump({"hosts": {"h1": {"connection": "local"}}}))
    code, out, _ = cli(capsys, "drift", str(pb), "-i", str(inv), "--state-dir", str(tmp_path / "s"))
    assert code == 0 and "no drift: 0 host(s)" in out


def test_an_altered_recorded_tree_is_not_trusted(setup, capsys, tmp_path):
    fleet, tree, pb, base, _inv = setup
    assert cli(capsys, "run", str(pb), *base, "--release-id", R1)[0] == 0
    (listing,) = (tmp_path / "state" / "trees").glob("*.listing")
    listing.write_bytes(listing.read_bytes().replace(b"lib/f03.php", b"lib/f04.php", 1))
    code, out, _ = cli(capsys, "drift", str(pb), *base)
    assert code == 2, out
    assert "is missing or altered in the state dir" in out and "3 of 3 host(s) drifted" in out
