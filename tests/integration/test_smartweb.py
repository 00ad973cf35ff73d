"""The shipped SmartWeb playbook, through the CLI, against the real sshd fleet."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.cli import main

pytestmark = pytest.mark.fleet

PLAYBOOK = Path(__file__).resolve().parents[2] / "playbooks" / "deploy-smartweb.yml"


def make_tree(root: Path, n: int = 200) -> list[str]:
    rng = random.Random(7)
    names = []
    for i in range(n):
        rel = f"wp-content/plugins/p{i % 10}/file{i:03d}.php"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"<?php // {i} {rng.random()}\n" * (1 + i % 7))
        os.utime(p, (1_700_000_000, 1_700_000_000))
        names.append(rel)
    (root / "index.php").write_text("<?php require 'wp-blog-header.php';\n")
    return names


@pytest.fixture
def smartweb(sshd_fleet, tmp_path):
    tree = tmp_path / "smartweb"
    names = make_tree(tree)
    inv = yaml.safe_load(sshd_fleet.write_inventory(tmp_path / "inv.yml").read_text())
    # each "server" of the fleet shares this machine: give each its own app_root
    for host in inv["hosts"].values():
        host["vars"]["app_root"] = f"{host['vars']['root']}/smartweb-{tmp_path.name}"
    (tmp_path / "inv.yml").write_text(yaml.safe_dump(inv))
    base = [
        "-i",
        str(tmp_path / "inv.yml"),
        "-e",
        f"smartweb_tree={tree}",
        "--state-dir",
        str(tmp_path / "state"),
        "-e",
        json.dumps({"cache_flush_command": ["sh", "-c", "echo flushed >> {{ app_root }}/flushes"]}),
    ]
    return tree, names, base


def cli(capsys, *args: str) -> tuple[int, dict]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip().startswith("{") else {"stderr": err}


def app_root(fleet_host, tmp_path) -> Path:
    return Path(fleet_host.data_dir) / f"smartweb-{tmp_path.name}"


def test_deploy_rerun_and_one_percent_change(sshd_fleet, smartweb, tmp_path, capsys):
    tree, names, base = smartweb
    code, doc = cli(capsys, "run", str(PLAYBOOK), *base, "--format", "json")
    assert code == 0, doc
    for h in sshd_fleet:
        root = app_root(h, tmp_path)
        current = root / "current"
        assert current.is_symlink() and os.readlink(current).startswith("releases/")
        assert (current / names[5]).read_text() == (tree / names[5]).read_text()
        assert (root / "flushes").read_text() == "flushed\n"
    first_releases = {h.name: sorted(os.listdir(app_root(h, tmp_path) / "releases")) for h in sshd_fleet}

    code, doc = cli(capsys, "plan", str(PLAYBOOK), *base, "--format", "json")
    assert code == 0
    code, doc = cli(capsys, "run", str(PLAYBOOK), *base, "--format", "json")
    assert code == 0
    assert {r["status"] for r in doc["results"]} == {"ok"}
    for h in sshd_fleet:  # nothing transferred, no new release, cache not flushed again
        assert sorted(os.listdir(app_root(h, tmp_path) / "releases")) == first_releases[h.name]
        assert (app_root(h, tmp_path) / "flushes").read_text() == "flushed\n"

    changed = names[::100]  # 1% of the tree
    for rel in changed:
        (tree / rel).write_text("<?php // hotfix\n")
    code, doc = cli(capsys, "plan", str(PLAYBOOK), *base, "--format", "json")
    assert code == 2
    for r in doc["results"]:
        if r["step"] == "sync":
            items = [tuple(i) for d in r["plan"]["diffs"] for i in d["items"] if i[0] in ("+", "~", "-")]
            assert sorted(items) == sorted(("~", rel) for rel in changed), r["host"]
    code, doc = cli(capsys, "run", str(PLAYBOOK), *base, "--format", "json")
    assert code == 0
    for h in sshd_fleet:
        root = app_root(h, tmp_path)
        releases = sorted(os.listdir(root / "releases"))
        assert len(releases) == 2
        old, new = root / "releases" / releases[0], root / "releases" / releases[1]
        assert os.readlink(root / "current") == f"releases/{releases[1]}"
        unchanged = names[1]
        assert os.stat(old / unchanged).st_ino == os.stat(new / unchanged).st_ino  # hard-linked, not sent
        assert os.stat(old / changed[0]).st_ino != os.stat(new / changed[0]).st_ino
        assert (new / changed[0]).read_text() == "<?php // hotfix\n"
        assert (old / changed[0]).read_text() != "<?php // hotfix\n"  # the old release is intact
        assert (root / "flushes").read_text() == "flushed\nflushed\n"


def test_second_run_refused_by_lock_and_sigint_releases_it(sshd_fleet, smartweb, tmp_path, capsys):
    tree, names, base = smartweb
    slow = [a if not a.startswith("{") else json.dumps({"cache_flush_command": ["sleep", "3"]}) for a in base]
    first = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "run", str(PLAYBOOK), *slow, "--format", "jsonl"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in first.stdout:
            event = json.loads(line)
            if event["event"] == "step_started" and event.get("step") == "flush_cache":
                break
        second = subprocess.run(
            [sys.executable, "-m", "engine.cli", "run", str(PLAYBOOK), *base],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert "lock" in second.stderr and "held" in second.stderr
        assert str(PLAYBOOK) in second.stderr  # names the holder's playbook
        assert "Traceback" not in second.stderr
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
        assert first.returncode == 130
    finally:
        if first.poll() is None:
            first.kill()
    code = main(["lock", "status", str(PLAYBOOK), *base[:2]])
    out = capsys.readouterr().out
    assert code == 0
    assert "held" not in out and out.count("free") == len(sshd_fleet)
    # the interrupt came during batch 1 (serial 50%: host01, host02): those hosts serve a complete
    # release; host03's batch never started, so it has no release at all rather than half of one
    for h in list(sshd_fleet)[:2]:
        assert (app_root(h, tmp_path) / "current" / "index.php").exists()
    assert not (app_root(sshd_fleet[2], tmp_path) / "current").exists()
    assert not (app_root(sshd_fleet[2], tmp_path) / "releases").exists()
