"""rsync module against real local directories (LocalConnection) and the real rsync binary."""

from __future__ import annotations

import grp
import itertools
import json
import os
import pwd
import threading
from pathlib import Path

import pytest

import modules._support.rsync_transfer as transfer
from engine.connection.base import CommandResult, ReadOnly
from engine.connection.fake import FakeConnection
from engine.connection.local import LocalConnection
from engine.connection.openssh import ssh_command
from engine.errors import ArgError, ModuleError
from engine.model.config import Host
from engine.model.results import Change
from engine.module import ApplyContext, PlanContext, get_module
from modules._support.manifest import ChmodRules, ExcludeRules
from modules._support.releases import RELEASE_INFO, releases_to_remove
from modules._support.rsync_transfer import rsync_argv
from modules.rsync import RsyncArgs, source_manifest

_ids = itertools.count()
MODULE = get_module("rsync")


def _common(tmp: Path, run_id: str | None = None, release_id: str | None = None) -> dict:
    rid = run_id or f"run{next(_ids)}"
    return dict(
        host="h1",
        step="sync",
        vars={"playbook_dir": str(tmp)},
        run_id=rid,
        release_id=release_id or f"2026010{next(_ids) % 10}T0000{next(_ids):04d}Z",
        state_dir=str(tmp / "state"),
    )


def plan(tmp: Path, args: RsyncArgs, conn=None, **kw):
    conn = conn or LocalConnection("h1")
    common = _common(tmp, **kw)
    return MODULE.plan(PlanContext(conn=ReadOnly(conn), **common), args), common


def apply(tmp: Path, p, common, conn=None):
    conn = conn or LocalConnection("h1")
    return MODULE.apply(ApplyContext(conn=conn, **common), p)


def deploy(tmp: Path, args: RsyncArgs, **kw):
    p, common = plan(tmp, args, **kw)
    out = apply(tmp, p, common) if p.change == Change.WILL_CHANGE else None
    return p, out


def write(path: Path, text: str, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def make_tree(root: Path, n: int = 20) -> None:
    for i in range(n):
        write(root / f"d{i % 4}" / f"f{i:03d}.txt", f"file {i}\n" * (i + 1), mtime=1_700_000_000 + i)
    write(root / "index.php", "<?php echo 1;\n", mtime=1_700_000_000)
    (root / "link").symlink_to("index.php")


def items(p) -> set[tuple[str, str]]:
    return {i for d in p.diffs for i in d.items}


def tree_of(root: Path) -> dict[str, bytes | str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            full = Path(dirpath) / n
            rel = str(full.relative_to(root))
            if full.is_symlink():
                out[rel] = "->" + os.readlink(full)
            elif full.is_file():
                out[rel] = full.read_bytes()
    return out


@pytest.fixture
def src(tmp_path: Path) -> Path:
    s = tmp_path / "src"
    make_tree(s)
    return s


# -- plain layout ---------------------------------------------------------------------------------


def test_first_deploy_creates_everything_then_no_change(tmp_path, src):
    dest = tmp_path / "dest"
    p, _ = plan(tmp_path, RsyncArgs(src="src", dest=str(dest)))
    assert p.change == Change.WILL_CHANGE
    expected = {("+", rel) for rel in source_manifest(str(src), "x")[0]}
    assert items(p) == expected
    assert p.outputs["changed_files"] == len(expected)
    apply(tmp_path, p, _)
    assert tree_of(dest) == tree_of(src)
    again, _ = plan(tmp_path, RsyncArgs(src="src", dest=str(dest)))
    assert again.change == Change.NO_CHANGE
    assert again.reason == "in sync: 21 files"
    assert again.outputs["changed_files"] == 0


def test_plan_lists_exactly_created_updated_deleted(tmp_path, src):
    dest = tmp_path / "dest"
    deploy(tmp_path, RsyncArgs(src="src", dest=str(dest)))
    write(src / "d0" / "f000.txt", "changed content\n", mtime=1_800_000_000)  # update
    write(src / "new" / "added.txt", "hello\n")  # create (dir + file)
    (src / "d1" / "f001.txt").unlink()  # delete
    write(dest / "stray" / "x.tmp", "junk")  # delete (dir + file)
    os.chmod(src / "d2" / "f002.txt", 0o600)  # mode-only update
    p, common = plan(tmp_path, RsyncArgs(src="src", dest=str(dest)))
    assert items(p) == {
        ("~", "d0/f000.txt"),
        ("+", "new"),
        ("+", "new/added.txt"),
        ("-", "d1/f001.txt"),
        ("-", "stray"),
        ("-", "stray/x.tmp"),
        ("~", "d2/f002.txt"),
    }
    assert p.data["delete_roots"] == ["d1/f001.txt", "stray"]
    apply(tmp_path, p, common)
    assert tree_of(dest) == tree_of(src)
    assert (dest / "d2" / "f002.txt").stat().st_mode & 0o777 == 0o600
    assert plan(tmp_path, RsyncArgs(src="src", dest=str(dest)))[0].change == Change.NO_CHANGE


def test_one_percent_change_moves_only_those_files(tmp_path):
    s = tmp_path / "src"
    for i in range(300):
        write(s / f"d{i % 10}" / f"f{i}.txt", f"{i}\n" * 50, mtime=1_700_000_000)
    dest = tmp_path / "dest"
    deploy(tmp_path, RsyncArgs(src="src", dest=str(dest)))
    inodes = {p: p.stat().st_ino for p in dest.rglob("*.txt")}
    changed = [f"d{i % 10}/f{i}.txt" for i in (3, 77, 150)]
    for rel in changed:
        write(s / rel, "new content\n", mtime=1_750_000_000)
    p, common = plan(tmp_path, RsyncArgs(src="src", dest=str(dest)))
    assert items(p) == {("~", rel) for rel in changed}
    assert p.data["transfer"] == sorted(changed)
    apply(tmp_path, p, common)
    moved = {str(p.relative_to(dest)) for p, ino in inodes.items() if p.stat().st_ino != ino}
    assert moved == set(changed)  # rsync rewrote exactly those (temp + rename gives new inodes)


def test_size_mtime_vs_checksum(tmp_path, src):
    dest = tmp_path / "dest"
    deploy(tmp_path, RsyncArgs(src="src", dest=str(dest)))
    # same size, same mtime, different bytes: invisible to size+mtime, like rsync
    write(dest / "index.php", "<?php echo 2;\n", mtime=1_700_000_000)
    assert plan(tmp_path, RsyncArgs(src="src", dest=str(dest)))[0].change == Change.NO_CHANGE
    p, common = plan(tmp_path, RsyncArgs(src="src", dest=str(dest), checksum=True))
    assert items(p) == {("~", "index.php")}
    apply(tmp_path, p, common)
    assert (dest / "index.php").read_text() == "<?php echo 1;\n"
    # content equal but mtime differs: checksum mode sees no change
    os.utime(dest / "d0" / "f000.txt", (1, 1))
    assert plan(tmp_path, RsyncArgs(src="src", dest=str(dest), checksum=True))[0].change == Change.NO_CHANGE
    assert items(plan(tmp_path, RsyncArgs(src="src", dest=str(dest)))[0]) == {("~", "d0/f000.txt")}


def test_exclude_and_delete_false(tmp_path, src):
    dest = tmp_path / "dest"
    write(src / "cache" / "big.bin", "x")
    write(src / "d0" / "debug.log", "x")
    write(dest / "app.log", "keep me")  # excluded on the receiver: protected from delete
    write(dest / "cache" / "runtime", "keep")  # excluded directory
    args = RsyncArgs(src="src", dest=str(dest), exclude=("*.log", "/cache/"))
    p, common = plan(tmp_path, args)
    names = {rel for _, rel in items(p)}
    assert not any(n.endswith(".log") or n.startswith("cache") for n in names)
    apply(tmp_path, p, common)
    assert (dest / "app.log").read_text() == "keep me"
    assert (dest / "cache" / "runtime").exists() and not (dest / "cache" / "big.bin").exists()
    assert not (dest / "d0" / "debug.log").exists()
    assert plan(tmp_path, args)[0].change == Change.NO_CHANGE
    write(dest / "extra.txt", "x")
    assert items(plan(tmp_path, args)[0]) == {("-", "extra.txt")}
    assert (
        plan(tmp_path, RsyncArgs(src="src", dest=str(dest), exclude=args.exclude, delete=False))[0].change
        == Change.NO_CHANGE
    )


def test_chmod_is_compared_and_applied(tmp_path, src):
    dest = tmp_path / "dest"
    args = RsyncArgs(src="src", dest=str(dest), chmod="D750,F640")
    deploy(tmp_path, args)
    assert (dest / "d0").stat().st_mode & 0o777 == 0o750
    assert (dest / "index.php").stat().st_mode & 0o777 == 0o640
    assert plan(tmp_path, args)[0].change == Change.NO_CHANGE
    os.chmod(dest / "index.php", 0o666)
    assert items(plan(tmp_path, args)[0]) == {("~", "index.php")}


@pytest.mark.parametrize("by", ["name", "id"])
def test_chown_compares_the_owner_by_name_or_id(tmp_path, src, by):
    dest = tmp_path / "dest"
    deploy(tmp_path, RsyncArgs(src="src", dest=str(dest)))
    st = (dest / "index.php").stat()
    if by == "name":
        mine = f"{pwd.getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name}"
    else:
        mine = f"{st.st_uid}:{st.st_gid}"
    assert plan(tmp_path, RsyncArgs(src="src", dest=str(dest), chown=mine))[0].change == Change.NO_CHANGE
    other = "nobody" if by == "name" else str(st.st_uid + 4242)
    assert ("~", "index.php") in items(plan(tmp_path, RsyncArgs(src="src", dest=str(dest), chown=other))[0])


def test_type_change_dir_to_file(tmp_path, src):
    dest = tmp_path / "dest"
    deploy(tmp_path, RsyncArgs(src="src", dest=str(dest)))
    import shutil

    shutil.rmtree(src / "d3")
    write(src / "d3", "now a file\n")
    p, common = plan(tmp_path, RsyncArgs(src="src", dest=str(dest)))
    assert ("~", "d3") in items(p)
    apply(tmp_path, p, common)
    assert tree_of(dest) == tree_of(src)
    assert plan(tmp_path, RsyncArgs(src="src", dest=str(dest)))[0].change == Change.NO_CHANGE


def test_plan_mutates_nothing(tmp_path, src):
    calls = []

    def handler(conn, argv):
        calls.append(argv)
        return CommandResult(0, b"E\0")

    fake = FakeConnection("h1", handler=handler)
    p, _ = plan(tmp_path, RsyncArgs(src="src", dest="/srv/app", releases=True), conn=fake)
    assert p.change == Change.WILL_CHANGE
    assert len(fake.commands) == 1 and fake.commands[0][:2] == ["sh", "-c"]  # one read-only probe
    assert not [c for c in fake.calls if c[0] == "put"]
    assert ("->", f"current -> releases/{p.outputs['release_name']}") in items(p)


def test_fingerprint_changes_with_remote(tmp_path, src):
    dest = tmp_path / "dest"
    deploy(tmp_path, RsyncArgs(src="src", dest=str(dest)))
    a = plan(tmp_path, RsyncArgs(src="src", dest=str(dest)))[0].fingerprint
    b = plan(tmp_path, RsyncArgs(src="src", dest=str(dest)))[0].fingerprint
    assert a == b
    write(dest / "d0" / "f000.txt", "drift")
    assert plan(tmp_path, RsyncArgs(src="src", dest=str(dest)))[0].fingerprint["remote"] != a["remote"]


def test_source_changed_after_plan_is_refused(tmp_path, src):
    dest = tmp_path / "dest"
    p, common = plan(tmp_path, RsyncArgs(src="src", dest=str(dest)))
    write(src / "late.txt", "x")
    common["run_id"] = "another-run"  # `playbook apply plan.json` is a new run
    with pytest.raises(ModuleError, match="changed since the plan"):
        apply(tmp_path, p, common)
    assert not dest.exists()


@pytest.mark.parametrize(
    "args,match",
    [
        (dict(src="missing", dest="/srv/x"), "'src' must be an existing directory"),
        (dict(src="src", dest="relative/path"), "'dest' must be an absolute path"),
        (dict(src="src", dest="/"), "'dest' must be an absolute path"),
        (dict(src="src", dest="/srv/x", keep=0), "'keep' must be at least 1"),
        (dict(src="src", dest="/srv/x", chmod="D7x9"), "'chmod' item"),
        (dict(src="src", dest="/srv/x", chown="a b"), "'chown' must be"),
        (dict(src="src", dest="/srv/x", shared=("../etc",), releases=True), "'shared' paths"),
        (dict(src="src", dest="/srv/x", shared=("uploads",)), "'shared' needs 'releases: true'"),
    ],
)
def test_hostile_arguments(tmp_path, src, args, match):
    with pytest.raises((ArgError, ModuleError), match=match):
        plan(tmp_path, RsyncArgs(**args))


def test_dest_is_a_file(tmp_path, src):
    write(tmp_path / "dest", "I am a file")
    with pytest.raises(ModuleError, match="not a directory"):
        plan(tmp_path, RsyncArgs(src="src", dest=str(tmp_path / "dest")))


def test_odd_file_names(tmp_path):
    s = tmp_path / "src"
    for name in ["with space.txt", "new\nline.txt", "tab\tname", "ünïcode.txt", "-dash", "quote'\"s", "back\\slash"]:
        write(s / name, name)
    dest = tmp_path / "dest"
    for checksum in (False, True):
        p, common = plan(tmp_path, RsyncArgs(src="src", dest=str(dest), checksum=checksum))
        if p.change == Change.WILL_CHANGE:
            apply(tmp_path, p, common)
        assert tree_of(dest) == tree_of(s)
        assert plan(tmp_path, RsyncArgs(src="src", dest=str(dest), checksum=checksum))[0].change == Change.NO_CHANGE


def test_source_manifest_computed_once_for_many_hosts(tmp_path, src, monkeypatch):
    import modules.rsync as mod

    calls = []
    real = mod.cached_manifest
    monkeypatch.setattr(mod, "cached_manifest", lambda p, *a: calls.append(p) or real(p, *a))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(source_manifest(str(src), "shared-run"))) for _ in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 20


# -- releases -------------------------------------------------------------------------------------


def rel_args(**kw) -> RsyncArgs:
    kw.setdefault("src", "src")
    return RsyncArgs(releases=True, **kw)


def test_release_layout_and_no_change(tmp_path, src):
    root = tmp_path / "app"
    args = rel_args(dest=str(root), shared=("uploads", "config/local"))
    p, out = deploy(tmp_path, args, release_id="20260101T000000Z")
    assert out["release_name"] == "20260101T000000Z"
    assert os.readlink(root / "current") == "releases/20260101T000000Z"
    cur = root / "releases" / "20260101T000000Z"
    assert os.readlink(cur / "uploads") == "../../shared/uploads"
    assert os.readlink(cur / "config" / "local") == "../../../shared/config/local"
    assert (root / "shared" / "uploads").is_dir()
    info = json.loads((cur / RELEASE_INFO).read_text())
    assert info["release"] == "20260101T000000Z" and info["source_digest"].startswith("sha256:")
    assert not list((root / "releases").glob(".*"))
    again, _ = deploy(tmp_path, args, release_id="20260102T000000Z")
    assert again.change == Change.NO_CHANGE
    assert again.outputs["release_name"] == "20260101T000000Z"
    assert sorted(os.listdir(root / "releases")) == ["20260101T000000Z"]  # no new release when in sync


def test_new_release_is_seeded_by_hard_links_and_old_release_untouched(tmp_path, src):
    root = tmp_path / "app"
    deploy(tmp_path, rel_args(dest=str(root)), release_id="r1")
    old = root / "releases" / "r1"
    before = tree_of(old)
    write(src / "index.php", "<?php echo 'v2';\n", mtime=1_800_000_000)
    os.chmod(src / "d0" / "f000.txt", 0o600)  # mode-only change must not chmod through the link
    p, out = deploy(tmp_path, rel_args(dest=str(root)), release_id="r2")
    assert items(p) == {("~", "index.php"), ("~", "d0/f000.txt"), ("->", "current -> releases/r2")}
    new = root / "releases" / "r2"
    assert os.readlink(root / "current") == "releases/r2"
    assert tree_of(old) == before
    assert (old / "d0" / "f000.txt").stat().st_mode & 0o777 == 0o644
    assert (new / "d1" / "f001.txt").stat().st_ino == (old / "d1" / "f001.txt").stat().st_ino
    assert (new / "index.php").stat().st_ino != (old / "index.php").stat().st_ino
    assert tree_of(new) | {} == {**tree_of(src), RELEASE_INFO: (new / RELEASE_INFO).read_bytes()}


def test_keep_cleanup_never_removes_current_or_previous(tmp_path, src):
    root = tmp_path / "app"
    for i in range(6):
        write(src / "version.txt", f"v{i}\n", mtime=1_700_000_000 + i)
        p, _ = deploy(tmp_path, rel_args(dest=str(root), keep=3), release_id=f"r{i}")
    assert sorted(os.listdir(root / "releases")) == ["r3", "r4", "r5"]
    assert os.readlink(root / "current") == "releases/r5"
    # keep=1 still keeps the previous release (the last good one)
    write(src / "version.txt", "v6\n", mtime=1_700_000_100)
    p, _ = deploy(tmp_path, rel_args(dest=str(root), keep=1), release_id="r6")
    assert ("-", "releases/r3") in items(p)
    assert sorted(os.listdir(root / "releases")) == ["r5", "r6"]
    # current pointing at an old release (a rollback): it survives cleanup
    (root / "current.tmp").symlink_to("releases/r5")
    os.replace(root / "current.tmp", root / "current")
    write(src / "version.txt", "v7\n", mtime=1_700_000_200)
    deploy(tmp_path, rel_args(dest=str(root), keep=1), release_id="r7")
    assert sorted(os.listdir(root / "releases")) == ["r5", "r7"]


def test_releases_to_remove():
    assert releases_to_remove(["a", "b", "c", "d"], 2, protect=("d", "a")) == ["b"]
    assert releases_to_remove(["a", "b"], 5, protect=()) == []
    assert releases_to_remove(["a", "b", "c"], 1, protect=("c", None)) == ["a", "b"]


def test_release_name_taken_gets_suffix(tmp_path, src):
    root = tmp_path / "app"
    deploy(tmp_path, rel_args(dest=str(root)), release_id="r1")
    write(src / "index.php", "changed", mtime=1_800_000_000)
    p, out = deploy(tmp_path, rel_args(dest=str(root)), release_id="r1")
    assert out["release_name"] == "r1-2"
    assert os.readlink(root / "current") == "releases/r1-2"


def test_failure_before_switch_leaves_current_intact(tmp_path, src, monkeypatch):

    root = tmp_path / "app"
    deploy(tmp_path, rel_args(dest=str(root)), release_id="r1")
    before = tree_of(root / "releases" / "r1")
    write(src / "index.php", "v2", mtime=1_800_000_000)
    p, common = plan(tmp_path, rel_args(dest=str(root)), release_id="r2")

    def broken(ctx, argv, paths, nbytes):
        raise ModuleError("rsync exited 23: simulated", path="h1")

    monkeypatch.setattr(transfer, "run_rsync", broken)
    with pytest.raises(ModuleError, match="simulated"):
        apply(tmp_path, p, common)
    assert os.readlink(root / "current") == "releases/r1"
    assert tree_of(root / "releases" / "r1") == before
    assert sorted(os.listdir(root / "releases")) == ["r1"]  # the half-built release is gone
    monkeypatch.undo()
    p2, _ = deploy(tmp_path, rel_args(dest=str(root)), release_id="r3")
    assert p2.change == Change.WILL_CHANGE and os.readlink(root / "current") == "releases/r3"


def test_stale_partial_is_cleaned_and_ignored(tmp_path, src):
    root = tmp_path / "app"
    deploy(tmp_path, rel_args(dest=str(root)), release_id="r1")
    write(root / "releases" / ".r0.partial" / "junk", "x")
    p, _ = plan(tmp_path, rel_args(dest=str(root)))
    assert p.change == Change.NO_CHANGE
    write(src / "index.php", "v2", mtime=1_800_000_000)
    deploy(tmp_path, rel_args(dest=str(root)), release_id="r2")
    assert sorted(os.listdir(root / "releases")) == ["r1", "r2"]


def test_current_that_is_a_directory_is_refused(tmp_path, src):
    root = tmp_path / "app"
    (root / "current").mkdir(parents=True)
    with pytest.raises(ModuleError, match="not a symlink"):
        plan(tmp_path, rel_args(dest=str(root)))


def test_broken_shared_link_makes_a_new_release(tmp_path, src):
    root = tmp_path / "app"
    args = rel_args(dest=str(root), shared=("uploads",))
    deploy(tmp_path, args, release_id="r1")
    (root / "releases" / "r1" / "uploads").unlink()
    p, _ = deploy(tmp_path, args, release_id="r2")
    assert p.change == Change.WILL_CHANGE
    assert os.readlink(root / "current" / "uploads") == "../../shared/uploads"


# -- the command line -----------------------------------------------------------------------------


def test_rsync_argv_for_ssh_hosts_is_strict():
    host = Host("web1", address="10.0.0.5", port=2222, user="deploy", key="/keys/id", known_hosts="/kh")
    argv = rsync_argv(host, "/src", "/srv/app", chown="www:www", chmod="D755,F644")
    rsh = argv[argv.index("-e") + 1]
    assert "StrictHostKeyChecking=yes" in rsh and "StrictHostKeyChecking=no" not in rsh
    assert "UserKnownHostsFile=/kh" in rsh and "BatchMode=yes" in rsh and "IdentitiesOnly=yes" in rsh
    assert "-i /keys/id" in rsh and "-p 2222" in rsh and "-l deploy" in rsh
    assert argv[-2:] == ["/src/", "10.0.0.5:/srv/app/"]
    assert "--inplace" not in argv and "--chown=www:www" in argv and "--chmod=D755,F644" in argv
    assert "UserKnownHostsFile=" + os.path.expanduser("~/.ssh/known_hosts") in " ".join(ssh_command(Host("w")))
    assert rsync_argv(Host("l", connection="local"), "/src", "/dst", chown=None, chmod=None)[-2:] == ["/src/", "/dst/"]


def test_exclude_rules_like_rsync():
    r = ExcludeRules(("*.log", "/cache/", "node_modules", "a/b", "**/tmp/*.bak"))
    assert r.excluded("x.log") and r.excluded("d/x.log")
    assert r.excluded("cache", is_dir=True) and r.excluded("cache/x")
    assert not r.excluded("cache") and not r.excluded("d/cache", is_dir=True)
    assert r.excluded("node_modules/x/y") and r.excluded("q/a/b") and not r.excluded("ab")
    assert r.excluded("x/y/tmp/z.bak") and not r.excluded("x/tmp/y/z.bak")


def test_chmod_rules():
    assert ChmodRules("D755,F644").apply(0o700, is_dir=True) == 0o755
    assert ChmodRules("D755,F644").apply(0o755, is_dir=False) == 0o644
    assert ChmodRules("ug+rwX,o-w").apply(0o600, is_dir=False) == 0o660
    assert ChmodRules("ug+rwX,o-w").apply(0o702, is_dir=True) == 0o770
    assert ChmodRules("Fa=r").apply(0o777, is_dir=False) == 0o444


def test_a_change_that_only_deletes_runs_no_rsync(tmp_path, src, monkeypatch):
    dest = tmp_path / "dest"
    deploy(tmp_path, RsyncArgs(src="src", dest=str(dest)))
    (src / "d1" / "f001.txt").unlink()
    calls = []
    monkeypatch.setattr(transfer, "run_rsync", lambda *a, **kw: calls.append(a))
    p, common = plan(tmp_path, RsyncArgs(src="src", dest=str(dest)))
    assert items(p) == {("-", "d1/f001.txt")}
    apply(tmp_path, p, common)
    assert calls == [] and not (dest / "d1" / "f001.txt").exists() and (dest / "d0" / "f000.txt").exists()
