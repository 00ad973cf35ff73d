"""The probe's fast paths agree with the full listing: same tree, far fewer bytes."""

from __future__ import annotations

import os

from engine import releases as rel
from engine.connection.local import LocalConnection
from engine.manifest import Entry, local_manifest


def _strip(tree):
    return {k: (e.kind, e.mode, e.size, e.mtime, e.target) for k, e in tree.items()}


def _make(root, files):
    for rel_path, text in files.items():
        p = root / rel_path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        os.utime(p, (1_700_000_000, 1_700_000_000))


def test_digest_match_and_delta_reconstruction(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    files = {f"d{i % 5}/f {i}.txt": f"content {i}\n" for i in range(60)}
    _make(src, files)
    _make(dest, files)
    os.symlink("d1/f 1.txt", src / "link")
    os.symlink("d1/f 1.txt", dest / "link")
    expected = {k: Entry(e.kind, e.mode, e.size, e.mtime, target=e.target) for k, e in local_manifest(str(src)).items()}
    conn = LocalConnection()
    digest = rel.canonical_digest(expected)

    same = rel.parse_probe(str(dest), conn.run(rel.probe_argv(str(dest), releases=False, checksum=False, expect=digest)),
                           releases=False)
    assert same.extra == {"matched": True} and same.tree is None  # one record, no listing

    (dest / "d2/f 7.txt").write_text("changed by hand\n")  # updated
    os.unlink(dest / "d3/f 8.txt")  # missing
    (dest / "stray.log").write_text("x")  # extra
    os.chmod(dest / "d4", 0o700)  # mode
    os.unlink(dest / "link")
    os.symlink("elsewhere", dest / "link")  # retargeted
    res = conn.run(rel.probe_argv(str(dest), releases=False, checksum=False, expect=digest))
    moved = rel.parse_probe(str(dest), res, releases=False)
    assert moved.extra == {"mismatched": True} and len(res.stdout) < 100

    delta = rel.delta_probe(conn, str(dest), expected)
    full = rel.parse_probe(str(dest), conn.run(rel.probe_argv(str(dest), releases=False, checksum=False)),
                           releases=False).tree
    assert _strip(delta) == _strip(full)
    assert delta["d3/f 8.txt" if "d3/f 8.txt" in delta else "stray.log"].kind == "f"
    assert "d3/f 8.txt" not in delta and delta["link"].target == "elsewhere" and delta["d4"].mode == 0o700
