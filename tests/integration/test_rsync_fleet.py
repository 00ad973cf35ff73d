"""The rsync module against the real sshd fleet, through the real executor and connection pool."""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

import modules._support.rsync_batch as batching
import modules._support.rsync_transfer as transfer
from engine.connection.base import ReadOnly
from engine.connection.openssh import ssh_command
from engine.connection.pool import ConnectionPool
from engine.errors import HostKeyError, ModuleError
from engine.execute.scheduler import Executor, RunOptions
from engine.model.config import Fleet, Group, Inventory, Playbook, Step
from engine.model.results import Change, Status
from engine.module import ApplyContext, PlanContext, get_module
from modules.rsync import RsyncArgs

pytestmark = pytest.mark.fleet

_ids = itertools.count()


def write(path: Path, text: str, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def make_tree(root: Path, n: int) -> list[str]:
    names = []
    for i in range(n):
        rel = f"wp-content/d{i % 10}/f{i:04d}.php"
        write(root / rel, f"<?php // file {i}\n" + "x" * (200 + i % 500), mtime=1_700_000_000)
        names.append(rel)
    return names


class Deployer:
    """Plans and runs a one-step (or two-step) playbook on fleet hosts through the executor."""

    def __init__(self, fleet, src: Path, app: str, *, hosts=None, **rsync_args) -> None:
        self.fleet = fleet
        self.hosts = hosts or fleet.model_hosts()
        self.src = src
        self.app = app
        self.args = {"src": str(src), "dest": "{{ root }}/" + app, **rsync_args}
        self.rsync_calls: list[tuple[str, int]] = []

    def inventory(self) -> Inventory:
        names = tuple(h.name for h in self.hosts)
        return Inventory("inv.yml", {h.name: h for h in self.hosts}, {"web": Group("web", hosts=names)})

    def run(self, mode: str = "run", steps: list[Step] | None = None, release_id: str | None = None):
        steps = steps or [Step("sync", "rsync", "web", self.args)]
        pb = Playbook("deploy.yml", "deploy", {}, {"web": Fleet("web", "web")}, tuple(steps))
        inv = self.inventory()
        n = next(_ids)
        opts = RunOptions(
            mode=mode,
            run_id=f"run{n}-{time.time_ns()}",
            release_id=release_id or f"2026{n:04d}T{time.time_ns() % 10**9:09d}Z",
            forks=10,
        )
        with ConnectionPool(connect_timeout=5) as pool:
            ex = Executor(pb, inv, opts, connect=lambda name: pool.get(inv.hosts[name]))
            summary = ex.execute()
        return summary, {(r.step, r.host): r for r in summary.results}

    def dest(self, i: int) -> Path:
        return self.fleet[i].data_dir / self.app


def tree_of(root: Path) -> dict[str, bytes | str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            full = Path(dirpath) / n
            rel = str(full.relative_to(root))
            if rel == ".playbook-release.json":
                continue
            out[rel] = (
                "->" + os.readlink(full) if full.is_symlink() else (full.read_bytes() if full.is_file() else "dir")
            )
    return out


@pytest.fixture
def count_rsync(monkeypatch):
    calls: list[tuple[str | None, int]] = []
    real = transfer.run_rsync

    def counting(ctx, argv, paths, nbytes):
        calls.append((ctx.host, len(paths)))
        return real(ctx, argv, paths, nbytes)

    monkeypatch.setattr(transfer, "run_rsync", counting)
    return calls


@pytest.fixture
def count_batches(monkeypatch):
    """Batches written on the controller (`written`: how many paths each) and applied on hosts
    (`applied`: host, paths)."""
    counts: dict[str, list] = {"written": [], "applied": []}
    write, send = batching._write_batch, transfer.send_batch

    def writing(src, listed, options, timeout):
        counts["written"].append(len(listed))
        return write(src, listed, options, timeout)

    def sending(ctx, src, root, paths, deletions, options, files):
        sent = send(ctx, src, root, paths, deletions, options, files)
        if sent:
            counts["applied"].append((ctx.host, len(paths)))
        return sent

    monkeypatch.setattr(batching, "_write_batch", writing)
    monkeypatch.setattr(transfer, "send_batch", sending)
    return counts


@pytest.fixture
def no_batches(monkeypatch):
    """Every transfer is one rsync per host (the relay or OpenSSH), however small."""
    monkeypatch.setattr(batching, "BATCH_MAX_BYTES", 0)


def test_full_deploy_rerun_and_one_percent_change(sshd_fleet, tmp_path, count_rsync, count_batches):
    """A small tree goes as one batch, written once for the three hosts and applied by each
    host's rsync; the 1% change too. Where nothing changed, nothing is written or sent."""
    src = tmp_path / "src"
    names = make_tree(src, 400)
    d = Deployer(sshd_fleet, src, "plain-app", exclude=("*.log",))
    summary, res = d.run()
    assert summary.exit_code() == 0, [r.message for r in summary.results]
    assert {r.status for r in res.values()} == {Status.CHANGED}
    for i in range(3):
        assert tree_of(d.dest(i)) == tree_of(src)
    assert sorted(h for h, _ in count_batches["applied"]) == sshd_fleet.names
    assert len(count_batches["written"]) == 1 and count_rsync == []

    count_batches["written"].clear()
    count_batches["applied"].clear()
    summary, res = d.run()
    assert {r.status for r in res.values()} == {Status.OK}
    assert all(r.message == "in sync: 400 files" for r in res.values())
    assert count_rsync == [] and count_batches == {"written": [], "applied": []}  # nothing where nothing changed

    changed = names[::100]  # 1%
    for rel in changed:
        write(src / rel, "<?php // new\n", mtime=1_750_000_000)
    inodes = {i: {p: p.stat().st_ino for p in d.dest(i).rglob("*.php")} for i in range(3)}
    plan_summary, plan_res = d.run("plan")
    assert plan_summary.exit_code() == 2
    for h in sshd_fleet.names:
        diff = plan_res[("sync", h)].plan.diffs[0]
        assert set(diff.items) == {("~", rel) for rel in changed}
    summary, res = d.run()
    assert summary.exit_code() == 0
    assert sorted(count_batches["applied"]) == sorted((h, len(changed)) for h in sshd_fleet.names)
    assert len(count_batches["written"]) == 1 and count_rsync == []
    for i in range(3):
        # each changed file is a new inode (temp + rename), every other one is untouched
        moved = {str(p.relative_to(d.dest(i))) for p, ino in inodes[i].items() if p.stat().st_ino != ino}
        assert moved == set(changed)
        assert tree_of(d.dest(i)) == tree_of(src)


def test_hosts_with_different_plans_get_a_batch_each(sshd_fleet, tmp_path, count_batches):
    """One batch per set of planned paths: a host that already has part of the tree gets a
    smaller one, the hosts that have nothing share one."""
    src = tmp_path / "src"
    names = make_tree(src, 50)
    app = f"groups-{tmp_path.name}"
    ahead = sshd_fleet[0].data_dir / app
    for rel in names[:20]:  # host01 has these already, byte and mtime equal
        write(ahead / rel, (src / rel).read_text(), mtime=1_700_000_000)
    d = Deployer(sshd_fleet, src, app)
    summary, res = d.run()
    assert summary.exit_code() == 0, [r.message for r in summary.results]
    # host01: 30 files and, for the batch, their 10 directories and wp-content; the others: all 61
    assert sorted(count_batches["written"]) == [41, 61]
    assert sorted(count_batches["applied"]) == [("host01", 30), ("host02", 61), ("host03", 61)]
    for i in range(3):
        assert tree_of(d.dest(i)) == tree_of(src)


def test_a_batch_into_a_release_never_writes_through_the_hard_links(sshd_fleet, tmp_path, count_batches):
    """The new release is seeded with hard links to the live one; the batch's files are new
    inodes there, the live release keeps its bytes, the untouched files stay shared."""
    src = tmp_path / "src"
    names = make_tree(src, 40)
    d = Deployer(sshd_fleet, src, f"rel-batch-{tmp_path.name}", releases=True)
    assert d.run(release_id="20260101T000001Z")[0].exit_code() == 0
    old = {i: tree_of(d.dest(i) / "releases" / "20260101T000001Z") for i in range(3)}
    for rel in names[:2]:
        write(src / rel, "<?php // v2\n", mtime=1_750_000_000)
    count_batches["applied"].clear()
    assert d.run(release_id="20260101T000002Z")[0].exit_code() == 0
    assert sorted(count_batches["applied"]) == [(h, 2) for h in sshd_fleet.names]
    for i in range(3):
        first, second = (d.dest(i) / "releases" / r for r in ("20260101T000001Z", "20260101T000002Z"))
        assert tree_of(first) == old[i]  # the live release of before, byte for byte
        assert tree_of(second) == tree_of(src)
        shared = {rel for rel in names if (first / rel).stat().st_ino == (second / rel).stat().st_ino}
        assert shared == set(names[2:])


def test_a_corrupted_batch_is_refused_by_the_host_and_rsync_sends_instead(
    sshd_fleet, tmp_path, monkeypatch, count_rsync
):
    """The host's rsync checks every file of a batch against its checksum: a batch altered on
    the way (here: one byte of file data) leaves the live files as they were, and the plan is
    then sent with a normal rsync."""
    src = tmp_path / "src"
    names = make_tree(src, 20)
    d = Deployer(sshd_fleet, src, f"corrupt-{tmp_path.name}")
    assert d.run()[0].exit_code() == 0
    write(src / names[3], "<?php // v2 " + "y" * 300 + "\n", mtime=1_750_000_000)
    write_batch = batching._write_batch
    seen: list[bytes] = []

    def corrupting(src_dir, listed, options, timeout):
        batch = bytearray(write_batch(src_dir, listed, options, timeout))
        at = batch.index(b"yyyyyyyy")
        batch[at] ^= 0x01
        seen.append(bytes(batch))
        return bytes(batch)

    monkeypatch.setattr(batching, "_write_batch", corrupting)
    monkeypatch.setattr(batching, "IDLE_SECONDS", 2)  # rsync 3.5.0 may wait for a resend instead of failing
    summary, res = d.run()
    assert summary.exit_code() == 0, [r.message for r in summary.results]
    assert len(seen) == 1
    assert sorted(h for h, _ in count_rsync) == sshd_fleet.names  # the fallback: one rsync per host
    for i in range(3):
        assert tree_of(d.dest(i)) == tree_of(src)
        assert not [p for p in d.dest(i).rglob(".*") if p.is_file()]  # no temp file left behind


def test_a_host_that_could_not_read_a_batch_gets_one_again_in_the_next_run(
    sshd_fleet, tmp_path, monkeypatch, count_rsync, count_batches
):
    """A host's rsync that rejects the batch's command (a usage error: exit 1) is sent plain
    rsync for the rest of that run only: a later run in the same process (the API in a
    long-lived service, or the host's rsync fixed since) tries the batch again."""
    src = tmp_path / "src"
    names = make_tree(src, 20)
    d = Deployer(sshd_fleet, src, f"refused-{tmp_path.name}")
    assert d.run()[0].exit_code() == 0
    write(src / names[1], "<?php // v2\n", mtime=1_750_000_000)
    monkeypatch.setattr(batching, "IDLE_SECONDS", "never")  # `--timeout=never`: rsync exits 1
    count_rsync.clear()
    count_batches["applied"].clear()
    summary, _ = d.run()
    assert summary.exit_code() == 0, [r.message for r in summary.results]
    assert count_batches["applied"] == []
    assert sorted(h for h, _ in count_rsync) == sshd_fleet.names  # the fallback, on every host
    monkeypatch.undo()  # the fixtures' counters go too: count by what the hosts hold instead
    batches = []
    send = transfer.send_batch

    def sending(ctx, *args):
        sent = send(ctx, *args)
        if sent:
            batches.append(ctx.host)
        return sent

    monkeypatch.setattr(transfer, "send_batch", sending)
    write(src / names[2], "<?php // v3\n", mtime=1_750_000_100)
    summary, _ = d.run()
    assert summary.exit_code() == 0, [r.message for r in summary.results]
    assert sorted(batches) == sshd_fleet.names
    for i in range(3):
        assert tree_of(d.dest(i)) == tree_of(src)


def test_releases_on_fleet_then_cache_clear_only_when_changed(sshd_fleet, tmp_path):
    src = tmp_path / "src"
    make_tree(src, 50)
    d = Deployer(sshd_fleet, src, "rel-app", releases=True, keep=2, shared=("wp-content/uploads",))
    marker = "{{ root }}/rel-app/flushed-{{ run.id }}"
    steps = [
        Step("sync", "rsync", "web", d.args),
        Step(
            "flush", "cache_clear", "web", {"command": ["touch", marker], "only_if_changed": ["sync"]}, needs=("sync",)
        ),
    ]
    summary, res = d.run(steps=steps, release_id="20260101T000001Z")
    assert summary.exit_code() == 0, [r.message for r in summary.results]
    for i in range(3):
        root = d.dest(i)
        assert os.readlink(root / "current") == "releases/20260101T000001Z"
        assert os.readlink(root / "current" / "wp-content" / "uploads") == "../../../shared/wp-content/uploads"
        assert len(list(root.glob("flushed-*"))) == 1
    summary, res = d.run(steps=steps, release_id="20260101T000002Z")
    assert {(k[0], r.status) for k, r in res.items()} == {("sync", Status.OK), ("flush", Status.OK)}
    for i in range(3):
        assert os.listdir(d.dest(i) / "releases") == ["20260101T000001Z"]
        assert len(list(d.dest(i).glob("flushed-*"))) == 1  # nothing changed: no flush


def test_unknown_host_key_is_refused_by_rsync_too(sshd_fleet, tmp_path, monkeypatch, no_batches):
    """A transfer over the relay limit runs its own OpenSSH, as strict as the engine."""
    monkeypatch.setattr(transfer, "RELAY_MAX_BYTES", -1)
    src = tmp_path / "src"
    make_tree(src, 5)
    partial_kh = sshd_fleet.write_known_hosts(tmp_path / "known_hosts_partial", only=[1, 2])
    good = sshd_fleet.model_hosts()[0]
    stranger = dataclasses.replace(good, known_hosts=str(partial_kh))
    module = get_module("rsync")
    dest = str(sshd_fleet[0].data_dir / "hostkey-app")
    with ConnectionPool(connect_timeout=5) as pool:
        conn = pool.get(good)  # the engine's connection is fine; only rsync's ssh sees the partial file
        common = dict(
            host=good.name,
            step="sync",
            vars={},
            run_id=f"hk{time.time_ns()}",
            release_id="r1",
            state_dir=str(tmp_path),
            target=stranger,
            mode="run",
        )
        plan = module.plan(PlanContext(conn=ReadOnly(conn), **common), RsyncArgs(src=str(src), dest=dest))
        assert plan.change == Change.WILL_CHANGE
        with pytest.raises(HostKeyError, match="unknown host key ssh-ed25519 SHA256:"):
            module.apply(ApplyContext(conn=conn, **common), plan)
    assert not os.path.exists(os.path.join(dest, "wp-content"))
    # and through the executor, the engine itself refuses the host before any rsync
    d = Deployer(sshd_fleet, src, "hostkey-app2", hosts=[stranger])
    summary, res = d.run()
    assert res[("sync", good.name)].status == Status.UNREACHABLE
    assert "unknown host key" in res[("sync", good.name)].message


@pytest.mark.parametrize("how", ["batch", "rsync"])
def test_host_down_mid_deploy_fails_alone_and_converges_later(fleet_factory, tmp_path, monkeypatch, how):
    if how == "rsync":
        monkeypatch.setattr(batching, "BATCH_MAX_BYTES", 0)
    fleet = fleet_factory(3)
    src = tmp_path / "src"
    names = make_tree(src, 100)
    d = Deployer(fleet, src, "app", releases=True, keep=3)
    summary, _ = d.run(release_id="20260101T000001Z")
    assert summary.exit_code() == 0
    old = {i: tree_of(d.dest(i) / "releases" / "20260101T000001Z") for i in range(3)}

    for rel in names[:10]:
        write(src / rel, "<?php // v2\n", mtime=1_760_000_000)
    entry = "send_batch" if how == "batch" else "run_rsync"
    real = getattr(transfer, entry)

    def dying(ctx, *args):
        if ctx.host == fleet[1].name:
            fleet.stop_host(1)  # sshd (and every session it forked) dies after the release was prepared
        return real(ctx, *args)

    monkeypatch.setattr(transfer, entry, dying)
    summary, res = d.run(release_id="20260101T000002Z")
    monkeypatch.setattr(transfer, entry, real)
    assert summary.exit_code() == 1
    assert res[("sync", fleet[1].name)].status in (Status.UNREACHABLE, Status.FAILED)
    for i in (0, 2):
        assert res[("sync", fleet[i].name)].status == Status.CHANGED
        assert os.readlink(d.dest(i) / "current") == "releases/20260101T000002Z"
    broken = d.dest(1)
    assert os.readlink(broken / "current") == "releases/20260101T000001Z"
    assert tree_of(broken / "releases" / "20260101T000001Z") == old[1]
    assert "20260101T000002Z" not in os.listdir(broken / "releases")

    fleet.start_host(1)
    summary, res = d.run(release_id="20260101T000003Z")
    assert summary.exit_code() == 0
    assert res[("sync", fleet[1].name)].status == Status.CHANGED
    assert {res[("sync", fleet[i].name)].status for i in (0, 2)} == {Status.OK}
    assert os.readlink(broken / "current") == "releases/20260101T000003Z"
    assert tree_of(broken / "current") == tree_of(src)
    assert not [n for n in os.listdir(broken / "releases") if n.startswith(".")]  # stale partial removed


@pytest.mark.parametrize("relayed", [False, True], ids=["ssh", "relay"])
def test_sshd_killed_while_rsync_is_transferring(fleet_factory, tmp_path, monkeypatch, relayed):
    if relayed:  # the 160 MB below would go over OpenSSH; through the engine's connection instead
        monkeypatch.setattr(transfer, "RELAY_MAX_BYTES", 1 << 30)
    fleet = fleet_factory(1)
    src = tmp_path / "src"
    make_tree(src, 10)
    d = Deployer(fleet, src, "app", releases=True)
    assert d.run(release_id="20260101T000001Z")[0].exit_code() == 0
    for i in range(40):
        (src / "big").mkdir(exist_ok=True)
        (src / "big" / f"blob{i}").write_bytes(os.urandom(4 << 20))
    real = transfer.run_rsync

    def killer(ctx, argv, paths, nbytes):
        threading.Timer(0.15, fleet.stop_host, args=(0,)).start()
        return real(ctx, argv, paths, nbytes)

    monkeypatch.setattr(transfer, "run_rsync", killer)
    summary, res = d.run(release_id="20260101T000002Z")
    assert summary.exit_code() == 1, [r.message for r in summary.results]
    assert os.readlink(d.dest(0) / "current") == "releases/20260101T000001Z"
    assert "big" not in os.listdir(d.dest(0) / "current")
    fleet.start_host(0)


def test_reader_never_sees_current_missing(sshd_fleet, tmp_path):
    src = tmp_path / "src"
    make_tree(src, 20)
    d = Deployer(sshd_fleet, src, "readlink-app", releases=True, keep=2)
    d.run()
    link = d.dest(0) / "current"
    stop = threading.Event()
    seen: list[str] = []
    missing: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(os.readlink(link))
            except OSError as exc:
                missing.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for k in range(8):
            write(src / "version.txt", f"{k}\n", mtime=1_700_000_000 + k)
            summary, _ = d.run()
            assert summary.exit_code() == 0
    finally:
        stop.set()
        t.join()
    assert missing == []
    assert len(set(seen)) >= 8 and len(seen) > 1000


def test_lock_over_ssh_refuses_a_second_run(sshd_fleet, tmp_path):
    from engine.errors import LockHeld
    from engine.execute.locks import LockInfo, acquire, release, status

    path = str(tmp_path / "locks" / "web.lock")
    host = sshd_fleet.model_hosts()[0]
    with ConnectionPool(connect_timeout=5) as first, ConnectionPool(connect_timeout=5) as second:
        holder = LockInfo.create(run_id="run-A", playbook="deploy-smartweb.yml", owner="alice")
        acquire(first.get(host), path, holder)
        with pytest.raises(LockHeld) as err:
            acquire(second.get(host), path, LockInfo.create(run_id="run-B", playbook="deploy-smartweb.yml"))
        assert "alice" in str(err.value) and "run-A" in str(err.value) and host.name in str(err.value)
        assert status(second.get(host), path) == holder
        assert release(first.get(host), path, "run-A") is True
        assert status(second.get(host), path) is None


def test_rsync_ssh_negotiates_the_engines_key_exchange(fleet_factory):
    """rsync's OpenSSH asks for ECDH on P-256 first, what the engine's own connection negotiates
    with this sshd (OpenSSH 9.2: cheaper for the host than its reference curve25519), not
    OpenSSH 9's far costlier sntrup761 hybrid, and AES-GCM before chacha20; still strict about
    the host key. Both are read where they happen: in sshd's own log."""
    fleet = fleet_factory(1, log_level="DEBUG1")
    host = fleet.model_hosts()[0]
    with ConnectionPool(connect_timeout=5) as pool:
        assert pool.get(host).run(["true"]).ok
    proc = subprocess.run([*ssh_command(host), "-v", host.hostname, "true"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "kex: algorithm: ecdh-sha2-nistp256" in proc.stderr
    server = [line for line in fleet[0].log.read_text().splitlines() if "kex: algorithm:" in line]
    assert len(server) == 2 and all("kex: algorithm: ecdh-sha2-nistp256 " in line for line in server), server
    assert "cipher: aes128-gcm@openssh.com" in proc.stderr  # hardware AES: cheaper than chacha20 here
    assert "sntrup761" not in proc.stderr.split("kex: algorithm:")[1].splitlines()[0]


@pytest.mark.parametrize("how", ["batch", "rsync"])
@pytest.mark.parametrize("releases", [False, True])
def test_deletions_over_ssh_with_and_without_a_transfer(
    sshd_fleet, tmp_path, count_rsync, count_batches, releases, monkeypatch, how
):
    """Deletions ride on the transfer's session (the shell that starts the host's rsync deletes
    first: the batch's command, or `--rsync-path`) when there is a transfer, and go over the
    engine's connection when there is none; odd names included."""
    if how == "rsync":
        monkeypatch.setattr(batching, "BATCH_MAX_BYTES", 0)
    src = tmp_path / "src"
    names = make_tree(src, 30)
    for odd in ("-rf", "it's here", "sp ace/x"):
        write(src / odd, "odd\n", mtime=1_700_000_000)
    d = Deployer(sshd_fleet, src, f"del-{releases}-{how}", releases=releases)
    assert d.run()[0].exit_code() == 0

    def live(i: int) -> Path:
        return d.dest(i) / "current" if releases else d.dest(i)

    (src / "-rf").unlink()
    (src / "it's here").unlink()
    shutil.rmtree(src / "sp ace")
    write(src / names[0], "<?php // changed\n", mtime=1_750_000_000)
    count_rsync.clear()
    argvs = []
    counting = transfer.run_rsync
    monkeypatch.setattr(
        transfer, "run_rsync", lambda ctx, argv, paths, n: (argvs.append(argv), counting(ctx, argv, paths, n))
    )
    count_batches["applied"].clear()
    assert d.run(release_id=f"del{time.time_ns()}")[0].exit_code() == 0
    if how == "rsync":
        assert sorted(h for h, _ in count_rsync) == sshd_fleet.names  # one rsync per host, nothing more
        assert all(any(a.startswith("--rsync-path=cd -- ") and " rm -rf -- " in a for a in argv) for argv in argvs)
    else:
        assert count_rsync == [] and sorted(count_batches["applied"]) == [(h, 1) for h in sshd_fleet.names]
    for i in range(3):
        assert tree_of(live(i)) == tree_of(src)

    (src / names[1]).unlink()  # only a deletion: no rsync at all
    count_rsync.clear()
    count_batches["applied"].clear()
    assert d.run(release_id=f"del{time.time_ns()}")[0].exit_code() == 0
    assert count_rsync == [] and count_batches["applied"] == []
    for i in range(3):
        assert tree_of(live(i)) == tree_of(src)


def _logins(fleet, i: int) -> int:
    return fleet[i].log.read_text(errors="replace").count("Accepted publickey")


def test_small_transfers_ride_the_engines_connection(fleet_factory, tmp_path, monkeypatch):
    """A batch goes over the engine's open connection, and so does rsync's remote shell up to
    RELAY_MAX_BYTES per host: one SSH login per host and run. Over it, rsync logs in again
    with its own OpenSSH."""
    fleet = fleet_factory(2, log_level="INFO")
    src = tmp_path / "src"
    names = make_tree(src, 60)
    for odd in ("it's here", "-rf", "sp ace/x y"):
        write(src / odd, "odd\n", mtime=1_700_000_000)
    d = Deployer(fleet, src, "relay-app", releases=True)

    def run_counting_logins() -> list[int]:
        before = [_logins(fleet, i) for i in range(2)]
        summary, _ = d.run()
        assert summary.exit_code() == 0, [r.message for r in summary.results]
        for i in range(2):
            assert tree_of(d.dest(i) / "current") == tree_of(src)
        return [_logins(fleet, i) - before[i] for i in range(2)]

    assert run_counting_logins() == [1, 1]  # a batch
    monkeypatch.setattr(batching, "BATCH_MAX_BYTES", 0)
    write(src / names[0], "<?php // v2\n", mtime=1_750_000_000)
    (src / "it's here").unlink()  # a deletion rides on the relayed session's --rsync-path too
    assert run_counting_logins() == [1, 1]
    monkeypatch.setattr(transfer, "RELAY_MAX_BYTES", -1)
    write(src / names[1], "<?php // v3\n", mtime=1_760_000_000)
    assert run_counting_logins() == [2, 2]
    assert _relays_under(fleet) == []  # no cat left


def _relays_under(fleet) -> list[int]:
    """Relay processes ("playbook-relay") that descend from this fleet's sshd processes; other
    test runs on the same machine have their own."""
    daemons = {h.pid for h in fleet}
    found = subprocess.run(["pgrep", "-f", "playbook-relay"], capture_output=True, text=True).stdout.split()
    mine = []
    for pid in map(int, found):
        p = pid
        while p > 1:
            try:
                p = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                break
            if p in daemons:
                mine.append(pid)
                break
    return mine


def test_relay_reports_the_hosts_error(sshd_fleet, tmp_path):
    """What the host's shell says when its command fails reaches the error, as over ssh."""
    src = tmp_path / "src"
    make_tree(src, 3)
    host = sshd_fleet.model_hosts()[0]
    dest = str(sshd_fleet[0].data_dir / "relay-error")
    with ConnectionPool(connect_timeout=5) as pool:
        conn = pool.get(host)
        ctx = ApplyContext(
            conn=conn,
            host=host.name,
            step="sync",
            vars={},
            run_id="relay-err",
            release_id="r1",
            state_dir=str(tmp_path),
            target=host,
            mode="run",
        )
        argv = transfer.rsync_argv(host, str(src), dest, chown=None, chmod=None)
        argv = [*argv[:-2], "--rsync-path=/nonexistent/rsync", *argv[-2:]]
        with pytest.raises(ModuleError, match=r"(?s)rsync exited \d+: .*/nonexistent/rsync: (not found|No such file)"):
            transfer.run_rsync(ctx, argv, ["wp-content"], 100)
        assert conn.run(["true"]).rc == 0  # the connection outlives the failed session
    assert not os.path.exists(dest)
