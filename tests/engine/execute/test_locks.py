"""Deploy locks on real directories through LocalConnection."""

from __future__ import annotations

import json
import os
import re
import threading
import time

import pytest

from engine.connection.local import LocalConnection
from engine.errors import ArgError, ConnectionFailed, LockHeld
from engine.execute.locks import (
    LockInfo,
    acquire,
    acquire_all,
    break_lock,
    default_lock_path,
    format_age,
    release,
    release_all,
    status,
)


@pytest.fixture
def conn() -> LocalConnection:
    return LocalConnection("web1")


def info(run_id: str, **kw) -> LockInfo:
    return LockInfo.create(run_id=run_id, playbook="deploy.yml", **kw)


def test_acquire_records_holder_and_release(tmp_path, conn):
    path = str(tmp_path / "locks" / "web.lock")
    mine = info("run-1", owner="alice")
    acquire(conn, path, mine)
    data = json.loads((tmp_path / "locks" / "web.lock" / "info.json").read_text())
    assert data["owner"] == "alice" and data["run_id"] == "run-1" and data["playbook"] == "deploy.yml"
    assert data["pid"] == os.getpid()
    assert status(conn, path) == mine
    assert oct((tmp_path / "locks").stat().st_mode & 0o7777) == "0o1777"
    assert release(conn, path, "run-1") is True
    assert status(conn, path) is None and not os.path.exists(path)
    assert release(conn, path, "run-1") is False


def test_second_run_is_refused_naming_the_holder(tmp_path, conn):
    path = str(tmp_path / "web.lock")
    first = LockInfo("alice", "run-1", "deploy-smartweb.yml", 4242, time.time() - 185, "deploy1")
    acquire(conn, path, first)
    with pytest.raises(LockHeld) as err:
        acquire(conn, path, info("run-2", owner="bob"))
    msg = str(err.value)
    assert "alice" in msg and "run-1" in msg and "deploy-smartweb.yml" in msg
    assert re.search(r"\) for 3m\d\ds;", msg)  # 185 s and however long a loaded machine took since
    assert "web1" in msg and "playbook lock release" in msg
    assert status(conn, path).run_id == "run-1"  # the refused run changed nothing
    assert release(conn, path, "run-2") is False and status(conn, path).run_id == "run-1"


def test_break_lock_removes_any_holder(tmp_path, conn):
    path = str(tmp_path / "web.lock")
    acquire(conn, path, info("run-1"))
    holder = break_lock(conn, path)
    assert holder is not None and holder.run_id == "run-1"
    assert status(conn, path) is None and break_lock(conn, path) is None
    acquire(conn, path, info("run-2"))


def test_lock_without_info_shows_unknown_holder(tmp_path, conn):
    path = tmp_path / "web.lock"
    path.mkdir()  # a holder that died between mkdir and writing info.json
    with pytest.raises(LockHeld, match="held by unknown"):
        acquire(conn, str(path), info("run-2"))
    assert status(conn, str(path)).owner == "unknown"
    assert release(conn, str(path), "") is False
    assert break_lock(conn, str(path)) is not None and not path.exists()


def test_concurrent_acquire_has_exactly_one_winner(tmp_path, conn):
    path = str(tmp_path / "race.lock")
    winners, losers = [], []
    barrier = threading.Barrier(16)

    def contender(i: int) -> None:
        barrier.wait()
        try:
            acquire(LocalConnection("web1"), path, info(f"run-{i}"))
            winners.append(i)
        except LockHeld:
            losers.append(i)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 15
    assert status(conn, path).run_id == f"run-{winners[0]}"


class Down:
    host = "down1"

    def run(self, *a, **kw):
        raise ConnectionFailed("connection refused", host="down1")


class Rooted(LocalConnection):
    """A local "host" whose `/locks/...` paths live under its own directory."""

    def __init__(self, host: str, root) -> None:
        super().__init__(host)
        self.root = str(root)

    def _map(self, text: str) -> str:
        return text.replace("/locks/", self.root + "/locks/")

    def run(self, argv, **kw):
        return super().run([self._map(a) for a in argv], **kw)

    def put(self, path, data, *, mode=None):
        return super().put(self._map(path), data, mode=mode)


def test_acquire_all_rolls_back_when_one_host_is_held(tmp_path):
    hosts = {h: Rooted(h, tmp_path / h) for h in ("h1", "h2", "h3")}
    path = "/locks/web/deploy.lock"
    acquire(hosts["h2"], path, info("other-run", owner="carol"))
    with pytest.raises(LockHeld, match="carol"):
        acquire_all({h: (lambda c=c: c) for h, c in hosts.items()}, path, info("run-9"))
    assert status(hosts["h1"], path) is None and status(hosts["h3"], path) is None  # ours rolled back
    assert status(hosts["h2"], path).run_id == "other-run"  # theirs kept
    got, unreachable = acquire_all({h: (lambda c=c: c) for h, c in hosts.items() if h != "h2"}, path, info("run-9"))
    assert got == ["h1", "h3"] and not unreachable


def test_same_run_may_take_its_lock_again(tmp_path, conn):
    path = str(tmp_path / "web.lock")
    acquire(conn, path, info("run-1"))
    acquire(conn, path, info("run-1"))
    assert release(conn, path, "run-1") is True


def test_acquire_all_reports_unreachable_hosts(tmp_path):
    path = str(tmp_path / "web.lock")
    conns = {"h1": lambda: LocalConnection("h1"), "down1": lambda: Down()}
    got, unreachable = acquire_all(conns, path, info("run-1"))
    assert got == ["h1"] and list(unreachable) == ["down1"]
    assert release_all({"h1": conns["h1"]}, path, "run-1") == {}
    assert status(LocalConnection("h1"), path) is None


def test_paths_and_formatting(monkeypatch):
    monkeypatch.delenv("PLAYBOOK_LOCK_DIR", raising=False)
    assert default_lock_path("web") == "/tmp/playbook-locks/web.lock"
    assert default_lock_path("../evil fleet") == "/tmp/playbook-locks/_evil_fleet.lock"
    monkeypatch.setenv("PLAYBOOK_LOCK_DIR", "/srv/locks")
    assert default_lock_path("web") == "/srv/locks/web.lock"
    for bad in ("relative.lock", "/", "/top.lock", "/tmp/../etc"):
        with pytest.raises(ArgError):
            status(LocalConnection(), bad)
    assert format_age(5) == "5s" and format_age(3725) == "1h02m" and format_age(90061) == "1d01h"


def _dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # reaped: no process has it (until the kernel hands it out again)


def test_refusal_says_whether_the_holders_pid_runs_on_this_controller(tmp_path, conn):
    import socket

    path = str(tmp_path / "web.lock")
    here = socket.gethostname()
    acquire(conn, path, LockInfo("alice", "run-1", "deploy.yml", os.getpid(), time.time(), here))
    with pytest.raises(LockHeld) as err:
        acquire(conn, path, info("run-2"))
    assert f"its pid {os.getpid()} is still running on {here}" in str(err.value)
    break_lock(conn, path)
    dead = _dead_pid()
    acquire(conn, path, LockInfo("alice", "run-1", "deploy.yml", dead, time.time(), here))
    with pytest.raises(LockHeld) as err:
        acquire(conn, path, info("run-2"))
    assert f"its pid {dead} is no longer running on {here}" in str(err.value)
    assert "stale lock" in str(err.value) and "playbook lock release" in str(err.value)


def test_refusal_cannot_tell_for_another_controller(tmp_path, conn):
    path = str(tmp_path / "web.lock")
    acquire(conn, path, LockInfo("alice", "run-1", "deploy.yml", 4242, time.time(), "deploy-elsewhere"))
    with pytest.raises(LockHeld) as err:
        acquire(conn, path, info("run-2"))
    assert "on deploy-elsewhere, another controller" in str(err.value)
    assert "cannot be seen from here" in str(err.value) and "--force" in str(err.value)


def test_a_lock_released_while_it_is_read_is_free_not_an_unknown_holder(tmp_path, conn, monkeypatch):
    # the holder releases (renames the directory away) between the reader's `[ -d ]` and its
    # `stat`: a `stat` on PATH that does exactly that, then fails as the real one would
    path = tmp_path / "locks" / "web.lock"
    acquire(conn, str(path), info("run-1"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "stat"
    fake.write_text(f'#!/bin/sh\nmv -T -- "{path}" "{path}.released-1" && rm -rf -- "{path}.released-1"\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert status(conn, str(path)) is None
    assert not path.exists()


class Hooked(LocalConnection):
    """A local host that calls `before(n, argv)` ahead of its n-th command: to put another
    run's (or part's) move exactly between two of ours."""

    def __init__(self, host: str, before) -> None:
        super().__init__(host)
        self.before, self.calls = before, 0

    def run(self, argv, **kw):
        self.calls += 1
        self.before(self.calls, argv)
        return super().run(argv, **kw)


def test_a_part_that_finds_the_lock_changing_hands_within_its_run_joins(tmp_path, conn):
    # parts A, C and B of run r1 share one lock directory (hosts on one machine): B's mkdir
    # finds A's lock, A releases before B looks, C takes it before B tries again
    path = str(tmp_path / "web.lock")
    acquire(conn, path, info("r1"), part="r1.1")

    def before(n, argv):
        if n == 2:  # B's look at the holder
            assert release(conn, path, "r1", part="r1.1") is True
        if n == 3:  # B's second try
            acquire(conn, path, info("r1"), part="r1.3")

    acquire(Hooked("web1", before), path, info("r1"), part="r1.2")
    assert status(conn, path).run_id == "r1"


def test_the_lock_stays_until_the_last_part_of_the_run_leaves(tmp_path, conn):
    path = str(tmp_path / "web.lock")
    acquire(conn, path, info("r1"), part="r1.1")
    acquire(conn, path, info("r1"), part="r1.2")
    assert release(conn, path, "r1", part="r1.1") is True
    with pytest.raises(LockHeld, match="run r1"):
        acquire(conn, path, info("r2"))  # part r1.2 still deploys
    assert release(conn, path, "r1", part="r1.2") is True
    assert status(conn, path) is None
    acquire(conn, path, info("r2"))


def test_parts_of_one_run_coming_and_going_never_let_another_run_in(tmp_path, conn):
    # 6 parts of r1 take and leave the lock 15 times each while run r2 keeps trying: r2 may
    # only get it when no part of r1 is inside, and a part inside always sees r1 as holder
    path = str(tmp_path / "web.lock")
    inside: set[int] = set()
    guard = threading.Lock()
    faults: list[str] = []
    done = threading.Event()
    start = threading.Barrier(7)

    def part(i: int) -> None:
        start.wait()
        c = LocalConnection("web1")
        for _ in range(15):
            while True:
                try:
                    acquire(c, path, info("r1"), part=f"r1.{i}")
                    break
                except LockHeld as exc:  # r2 is in: wait for it; refused by its own run is a fault
                    if "run r2" not in str(exc):
                        faults.append(f"part {i} refused: {exc}")
                        return
            with guard:
                inside.add(i)
            holder = status(c, path)
            if holder is None or holder.run_id != "r1":
                faults.append(f"part {i} inside, holder {holder}")
            with guard:
                inside.discard(i)
            release(c, path, "r1", part=f"r1.{i}")

    def other() -> None:
        start.wait()
        c = LocalConnection("web1")
        while not done.is_set():
            try:
                acquire(c, path, info("r2"))
            except LockHeld as exc:
                if "run r1" not in str(exc):
                    faults.append(f"r2 refused by {exc}")
                continue
            with guard:
                if inside:
                    faults.append(f"r2 got the lock while parts {sorted(inside)} were inside")
            release(c, path, "r2")

    def guarded(fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # any error in a thread fails the test
            faults.append(f"{fn.__name__}{args}: {exc!r}")
            done.set()

    threads = [threading.Thread(target=guarded, args=(part, i)) for i in range(6)]
    rival = threading.Thread(target=guarded, args=(other,))
    for t in [*threads, rival]:
        t.start()
    for t in threads:
        t.join()
    done.set()
    rival.join()
    assert not faults, faults[:5]
