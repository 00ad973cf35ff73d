"""The delta probe agrees with the full listing: same tree, a fraction of the bytes."""

from __future__ import annotations

import grp
import os
import pwd

from engine.connection.local import LocalConnection
from modules._support import releases as rel
from modules._support.manifest import Entry, local_manifest


def _strip(tree):
    return {k: (e.kind, e.mode, e.size, e.mtime, e.target) for k, e in tree.items()}


def _make(root, files):
    for rel_path, text in files.items():
        p = root / rel_path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        os.utime(p, (1_700_000_000, 1_700_000_000))


def test_in_sync_answers_nothing_and_a_delta_rebuilds_the_full_listing(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    files = {f"d{i % 5}/f {i}.txt": f"content {i}\n" for i in range(60)}
    _make(src, files)
    _make(dest, files)
    os.symlink("d1/f 1.txt", src / "link")
    os.symlink("d1/f 1.txt", dest / "link")
    expected = {k: Entry(e.kind, e.mode, e.size, e.mtime, target=e.target) for k, e in local_manifest(str(src)).items()}
    conn = LocalConnection()

    state, tree = rel.delta_probe(conn, str(dest), expected)
    assert state.extra == {"delta": []} and _strip(tree) == _strip(expected)  # in sync: an empty answer

    (dest / "d2/f 7.txt").write_text("changed by hand\n")  # updated
    os.unlink(dest / "d3/f 8.txt")  # missing
    (dest / "stray.log").write_text("x")  # extra
    os.chmod(dest / "d4", 0o700)  # mode
    os.unlink(dest / "link")
    os.symlink("elsewhere", dest / "link")  # retargeted
    state, delta = rel.delta_probe(conn, str(dest), expected)
    assert 0 < len(state.extra["delta"]) <= 10  # only the differing lines travel
    full = rel.parse_probe(
        str(dest), conn.run(rel.probe_argv(str(dest), releases=False, checksum=False)), releases=False
    ).tree
    assert _strip(delta) == _strip(full)
    assert "d3/f 8.txt" not in delta and delta["stray.log"].kind == "f"
    assert delta["link"].target == "elsewhere" and delta["d4"].mode == 0o700

    state, tree = rel.delta_probe(conn, str(tmp_path / "absent"), expected)
    assert tree is None  # first deploy: nothing there


def test_odd_names_and_modes_list_alike_on_both_sides(tmp_path):
    """The host lists files through stat(1), the controller from lstat: a name with a newline, a
    leading dash, a setuid bit, an empty mode or a sub-second mtime must come out the same."""
    src = tmp_path / "src"
    files = {"-rf": "a", "new\nline.txt": "b", "sp ace/ünï.txt": "c", "suid.sh": "d", "none": "e", "frac": "f"}
    _make(src, files)
    os.chmod(src / "suid.sh", 0o4755)
    os.chmod(src / "none", 0)
    os.utime(src / "frac", (1_700_000_000.75, 1_700_000_000.75))
    expected = {k: Entry(e.kind, e.mode, e.size, e.mtime, target=e.target) for k, e in local_manifest(str(src)).items()}
    state, tree = rel.delta_probe(LocalConnection(), str(src), expected)
    assert state.extra == {"delta": []}, state.extra  # the tree probed against its own listing: in sync
    assert _strip(tree) == _strip(expected)


def test_the_full_listing_names_owners_only_when_asked(tmp_path):
    """Names cost the host a passwd and group lookup per entry: only `chown` compares them."""
    _make(tmp_path / "dest", {"a/b.txt": "x"})
    st = os.stat(tmp_path / "dest" / "a" / "b.txt")
    conn = LocalConnection()

    def owner(owners: bool) -> str:
        argv = rel.probe_argv(str(tmp_path / "dest"), releases=False, checksum=False, owners=owners)
        return rel.parse_probe(str(tmp_path / "dest"), conn.run(argv), releases=False).tree["a/b.txt"].owner

    assert owner(False) == f"::{st.st_uid}:{st.st_gid}"
    names = f"{pwd.getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name}"
    assert owner(True) == f"{names}:{st.st_uid}:{st.st_gid}"


def test_a_listing_cut_at_the_output_limit_is_an_error_not_missing_files(tmp_path, monkeypatch):
    import pytest

    from engine.connection import local
    from engine.errors import ModuleError

    _make(tmp_path / "dest", {f"f{i}.txt": "x" for i in range(200)})
    monkeypatch.setattr(local, "MAX_OUTPUT", 1000)  # 200 entries list in more than 1000 bytes
    argv = rel.probe_argv(str(tmp_path / "dest"), releases=False, checksum=False)
    res = LocalConnection().run(argv)
    assert res.dropped > 0
    with pytest.raises(ModuleError, match="its listing is over"):
        rel.parse_probe(str(tmp_path / "dest"), res, releases=False)
