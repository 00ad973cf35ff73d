"""The shipped SmartWeb playbook, through the CLI, against the real sshd fleet."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
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
    """Synchronised on events, not on a flush that takes long enough: each host's cache flush
    announces itself and then blocks on a FIFO until the test has tried the second run and
    interrupted the first (so batch 1 is certainly in flight when the SIGINT lands)."""
    tree, names, base = smartweb

    def flag(h, what: str) -> Path:  # beside the host's app_root
        return Path(f"{app_root(h, tmp_path)}.flush.{what}")

    for h in sshd_fleet:
        os.mkfifo(flag(h, "go"))
    held = json.dumps(
        {"cache_flush_command": ["sh", "-c", 'touch "$1.started"; read _ < "$1.go"', "sh", "{{ app_root }}.flush"]}
    )
    slow = [a if not a.startswith("{") else held for a in base]
    err_path = tmp_path / "first.stderr"
    with open(err_path, "w") as err_file:
        first = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "run", str(PLAYBOOK), *slow, "--format", "jsonl"],
            stdout=subprocess.DEVNULL,
            stderr=err_file,
            text=True,
        )
    batch1 = list(sshd_fleet)[:2]  # serial 50%: host01, host02
    try:
        wait_for(lambda: all(flag(h, "started").exists() for h in batch1), first, err_path)
        second = subprocess.run(
            [sys.executable, "-m", "engine.cli", "run", str(PLAYBOOK), *base],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1
        assert "lock" in second.stderr and "held" in second.stderr
        assert str(PLAYBOOK) in second.stderr  # names the holder's playbook
        assert "is still running" in second.stderr  # and says its holder is alive
        assert "Traceback" not in second.stderr
        first.send_signal(signal.SIGINT)
        wait_for(lambda: "interrupt: letting the steps in flight finish" in err_path.read_text(), first, err_path)
        for h in batch1:  # now the flushes may finish
            with open(flag(h, "go"), "w") as fh:
                fh.write("go\n")
        first.wait(timeout=120)
        assert first.returncode == 130, err_path.read_text()
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


def wait_for(cond, proc: subprocess.Popen, err_path: Path, timeout: float = 120.0) -> None:
    """Poll `cond` (an event: a file, a line) until true; fail loudly if `proc` exits first or
    after `timeout` (a harness bound, not a timing)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the first run exited ({proc.returncode}) early: {err_path.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s: {err_path.read_text()}")
        time.sleep(0.02)
