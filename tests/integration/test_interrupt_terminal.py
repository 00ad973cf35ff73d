"""Ctrl-C typed into a real terminal (a tmux pane), not `kill -INT PID`.

A terminal's Ctrl-C is SIGINT to the whole foreground process group: rsync, ssh and local
commands get it too unless they run in sessions of their own. These tests type it into the
pane that runs `playbook run` and check what the docs promise (docs/execution.md,
"Interrupting a run"): the first Ctrl-C lets in-flight steps finish and starts nothing new
(exit 130); a second one aborts at once, also mid-download; the run is recorded as interrupted;
no child outlives playbook, even a SIGKILLed one.

Every wait is for an event: a step's child touches a file, then blocks on a FIFO the test opens
when it chooses; a proxy holds a download part-way. No sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import textwrap
from pathlib import Path

import boto3
import pytest
import yaml

from modules._support.rsync_batch import BATCH_MAX_BYTES
from tests.harness.holdproxy import HoldProxy
from tests.harness.terminal import Terminal, tmux_available, wait_for

pytestmark = [
    pytest.mark.fleet,
    pytest.mark.skipif(not tmux_available(), reason="tmux is not installed (apt-get install tmux)"),
]

ROOT = Path(__file__).resolve().parents[2]
FIRST = "interrupt: letting the steps in flight finish"
SECOND = "interrupt: aborting"


@pytest.fixture(autouse=True)
def _no_stale_locks():
    """A test here that fails part-way kills its playbook: break the locks it left (their holder
    is dead), so the rest of the session's fleet tests are not refused."""
    yield
    lock_dir = Path(os.environ.get("PLAYBOOK_LOCK_DIR", "/nonexistent"))
    for lock in lock_dir.glob("*.lock"):
        try:
            pid = json.loads((lock / "info.json").read_text())["pid"]
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(lock, ignore_errors=True)
        except (OSError, ValueError, KeyError):
            pass


def env_for(bin_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env


def playbook_cmd(pb: Path, inv: Path, state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli", "run", str(pb), "-i", str(inv), "--state-dir", str(state), *extra]


def held_rsync(bin_dir: Path, sync_dir: Path) -> None:
    """An `rsync` first on PATH that announces itself and waits for the test, then is the real
    rsync: `started-<pid>` appears, then it blocks reading the FIFO `go-<pid>`."""
    real = shutil.which("rsync")
    assert real
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "rsync"
    shim.write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        f="{sync_dir}/go-$$"
        mkfifo "$f"
        touch "{sync_dir}/started-$$"
        read _ < "$f"
        exec {real} "$@"
        """)
    )
    shim.chmod(0o755)


def release_all(sync_dir: Path, released: set[str]) -> None:
    """Let every announced child go on (a FIFO whose reader is not there yet: next time)."""
    for started in sync_dir.glob("started-*"):
        tag = started.name.removeprefix("started-")
        if tag in released:
            continue
        try:
            fd = os.open(sync_dir / f"go-{tag}", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: the reader has not opened it yet; ENOENT: not made yet
            continue
        os.write(fd, b"go\n")
        os.close(fd)
        released.add(tag)


def run_status(state: Path) -> list[tuple[str, int | None]]:
    with sqlite3.connect(state / "history.sqlite") as db:
        return list(db.execute("SELECT status, exit_code FROM runs"))


def step_statuses(state: Path) -> dict[tuple[str, str | None], str]:
    with sqlite3.connect(state / "history.sqlite") as db:
        return {(step, host): status for step, host, status in db.execute("SELECT step, host, status FROM results")}


def inventory_with_box(sshd_fleet, tmp_path: Path) -> Path:
    """The sshd fleet as `web`, plus `box`, a `local` host (commands run on the controller)."""
    inv_path = sshd_fleet.write_inventory(tmp_path / "inv.yml")
    doc = yaml.safe_load(inv_path.read_text())
    doc["hosts"]["box"] = {"connection": "local"}
    doc["groups"]["box"] = {"hosts": ["box"]}
    inv_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return inv_path


@pytest.mark.parametrize("how", ["batch", "rsync per host"])
def test_ctrl_c_lets_in_flight_rsync_and_local_commands_finish(sshd_fleet, tmp_path, how):
    """The controller's rsync is held until the test lets it go: with a small tree, the one that
    writes the batch for hosts with the same plan (host01 already has one file, so it and
    host02 get a batch each); with over a megabyte, each host's own rsync."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(20):
        (src / "sub" / f"f{i}.txt").write_text(f"file {i}\n")
    app = f"ctrlc-{tmp_path.name}"
    if how == "batch":
        ahead = sshd_fleet[0].data_dir / app / "sub" / "f0.txt"
        ahead.parent.mkdir(parents=True)
        shutil.copy2(src / "sub" / "f0.txt", ahead)
    else:
        (src / "big.bin").write_bytes(os.urandom(BATCH_MAX_BYTES))
    sync_dir = tmp_path / "sync"
    sync_dir.mkdir()
    held_rsync(tmp_path / "bin", sync_dir)
    box = tmp_path / "box"
    box.mkdir()
    os.mkfifo(box / "go-box")
    pb = tmp_path / "pb.yml"
    pb.write_text(
        textwrap.dedent(f"""\
        fleets:
          web: {{hosts: web, forks: 2}}
          box: {{hosts: box}}
        steps:
          - id: sync
            module: rsync
            fleet: web
            args: {{src: "{src}/", dest: "{{{{ root }}}}/{app}"}}
          - id: hold
            module: command
            fleet: box
            args:
              argv: [sh, -c, 'touch "$1/started-box"; read _ < "$1/go-box"; echo done > "$1/done-box"', sh, "{box}"]
          - id: after
            module: command
            fleet: web
            needs: [sync]
            args: {{argv: [touch, "{{{{ root }}}}/{app}/after"]}}
        """)
    )
    inv = inventory_with_box(sshd_fleet, tmp_path)
    state = tmp_path / "state"
    with Terminal(tmp_path / "term") as term:
        term.start(playbook_cmd(pb, inv, state, "--forks", "3"), env=env_for(tmp_path / "bin"))
        term.until(lambda: (box / "started-box").exists(), what="the local command to start")
        term.until(lambda: len(list(sync_dir.glob("started-*"))) >= 2, what="rsync to start for two hosts")
        term.ctrl_c()
        term.until(lambda: FIRST in term.stderr(), what="playbook to acknowledge the interrupt")
        with open(box / "go-box", "w") as fh:  # the local command goes on: it never saw SIGINT
            fh.write("go\n")
        released: set[str] = set()
        wait_for(lambda: release_all(sync_dir, released) or term.exited() is not None, what="the run to end")
        code = term.wait()
        out, err = term.stdout(), term.stderr()
    assert code == 130, out + err
    assert (box / "done-box").read_text() == "done\n"
    first, second, third = (h.data_dir / app for h in sshd_fleet)
    assert sorted(p.name for p in (first / "sub").iterdir()) == sorted(f"f{i}.txt" for i in range(20))
    assert (second / "sub" / "f19.txt").exists()
    assert not third.exists()  # its rsync never started
    assert not (first / "after").exists() and not (second / "after").exists()  # nothing new started
    assert "Traceback" not in err
    statuses = step_statuses(state)
    assert statuses[("sync", "host01")] == statuses[("sync", "host02")] == statuses[("hold", "box")] == "changed"
    assert statuses[("sync", "host03")] == statuses[("after", "host01")] == "skipped"
    assert "Interrupted: work in progress was finished, nothing new was started." in out
    assert run_status(state) == [("interrupted", 130)]


def test_second_ctrl_c_aborts_a_download_at_once_and_history_says_interrupted(sshd_fleet, moto_s3, tmp_path):
    client = boto3.client("s3", endpoint_url=moto_s3)
    bucket = f"abort-{tmp_path.name[-20:].lower().replace('_', '-')}".strip("-")
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="big.bin", Body=os.urandom(2 << 20), ChecksumAlgorithm="SHA256")
    host, port = moto_s3.removeprefix("http://").split(":")
    box = tmp_path / "box"
    box.mkdir()
    pb = tmp_path / "pb.yml"
    with HoldProxy((host, int(port))) as proxy:
        pb.write_text(
            textwrap.dedent(f"""\
            sources:
              big: {{type: s3, bucket: {bucket}, key: big.bin, endpoint_url: "{proxy.url}"}}
            fleets:
              box: {{hosts: box}}
            steps:
              - id: use
                module: command
                fleet: box
                args: {{argv: [cp, "{{{{ sources.big.path }}}}", "{box}/big.bin"]}}
            """)
        )
        inv = inventory_with_box(sshd_fleet, tmp_path)
        state = tmp_path / "state"
        with Terminal(tmp_path / "term") as term:
            term.start(playbook_cmd(pb, inv, state, "--format", "jsonl"), env=env_for())
            term.until(proxy.holding.is_set, what="the download to be part-way")
            term.ctrl_c()
            term.until(lambda: FIRST in term.stderr(), what="playbook to acknowledge the first interrupt")
            term.ctrl_c()
            code = term.wait(timeout=60)  # the proxy still holds the download: nothing waited for it
            assert not proxy._released.is_set()
            out, err = term.stdout(), term.stderr()
    assert SECOND in err, err
    assert code == 130, out + err
    assert "Traceback" not in err
    assert not (box / "big.bin").exists()
    assert run_status(state) == [("interrupted", 130)]
    assert "cut off part-way" in out and "sources.big" in out


def test_children_die_with_a_sigkilled_playbook(sshd_fleet, tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    os.mkfifo(box / "go")
    pb = tmp_path / "pb.yml"
    pb.write_text(
        textwrap.dedent(f"""\
        fleets:
          box: {{hosts: box}}
        steps:
          - id: hold
            module: command
            fleet: box
            args: {{argv: [sh, -c, 'echo $$ > "$1/pid.tmp"; mv "$1/pid.tmp" "$1/pid"; read _ < "$1/go"', sh, "{box}"]}}
        """)
    )
    inv = inventory_with_box(sshd_fleet, tmp_path)
    with Terminal(tmp_path / "term") as term:
        term.start(playbook_cmd(pb, inv, tmp_path / "state"), env=env_for())
        term.until(lambda: (box / "pid").exists(), what="the local command to start")
        child = int((box / "pid").read_text())
        os.kill(term.pid(), 9)
        wait_for(lambda: gone(child), what=f"the child {child} to die with playbook")
        assert term.wait() != 0


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_sigkilled_holders_lock_is_refused_saying_its_pid_is_gone(sshd_fleet, tmp_path, capsys):
    from engine.cli import main

    app = f"killed-{tmp_path.name}"
    first = sshd_fleet[0].data_dir / app
    first.mkdir(parents=True)
    os.mkfifo(first / "go")
    pb = tmp_path / "pb.yml"
    pb.write_text(
        textwrap.dedent(f"""\
        fleets:
          web: {{hosts: web}}
        steps:
          - id: hold
            module: command
            fleet: web
            args: {{argv: [sh, -c, '[ -p "$1/go" ] || exit 0; touch "$1/started"; read _ < "$1/go"', sh, "{{{{ root }}}}/{app}"]}}
        """)
    )
    inv = sshd_fleet.write_inventory(tmp_path / "inv.yml")
    state = str(tmp_path / "state")
    try:
        with Terminal(tmp_path / "term") as term:
            term.start(playbook_cmd(pb, inv, tmp_path / "state"), env=env_for())
            term.until(lambda: (first / "started").exists(), what="the step to start on the first host")
            pid = term.pid()
            assert main(["run", str(pb), "-i", str(inv), "--state-dir", state]) == 1
            assert f"its pid {pid} is still running on" in capsys.readouterr().err
            os.kill(pid, 9)
            term.wait()
        assert main(["run", str(pb), "-i", str(inv), "--state-dir", state]) == 1
        err = capsys.readouterr().err
        assert f"its pid {pid} is no longer running on" in err and "stale lock" in err, err
        assert main(["lock", "release", str(pb), "-i", str(inv)]) == 0
        unblock(first / "go")
        assert main(["run", str(pb), "-i", str(inv), "--state-dir", state]) == 0
    finally:
        unblock(first / "go")


def unblock(fifo: Path) -> None:
    """Let the host's orphaned `read` (its playbook was killed) end, and remove the FIFO."""
    if fifo.exists():
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        os.write(fd, b"go\n")
        os.close(fd)
        fifo.unlink()
