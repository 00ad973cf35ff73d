"""modules._support.extract: hostile archives are refused and leave nothing behind; good ones extract whole."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from modules._support.extract import ExtractError, UnsafeEntry, detect_kind, extract_archive, kind_from_name

MTIME = 1_600_000_000


def _info(
    name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes = b"", link: str = "", mode: int = 0o644
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    info.linkname = link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def make_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def make_zip(path: Path, entries: list[tuple[str, bytes, int]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, unix_mode in entries:
            zi = zipfile.ZipInfo(name, date_time=(2020, 1, 2, 3, 4, 6))
            zi.external_attr = unix_mode << 16
            zf.writestr(zi, data)
    return path


@pytest.fixture
def box(tmp_path):
    """A directory holding the destination's parent, with a sentinel outside it."""
    work = tmp_path / "work"
    work.mkdir()
    return work


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_good_tar_extracts_with_normalised_modes_and_times(box):
    arc = make_tar(
        box.parent / "good.tar.gz",
        [
            _info("pkg/", tarfile.DIRTYPE, mode=0o775),
            _info("pkg/bin/run", data=b"#!/bin/sh\n", mode=0o4777),
            _info("pkg/index.html", data=b"<h1>hi</h1>", mode=0o666),
            _info("pkg/latest", tarfile.SYMTYPE, link="index.html"),
            _info("pkg/assets/up", tarfile.SYMTYPE, link="../index.html"),
            _info("pkg/copy.html", tarfile.LNKTYPE, link="pkg/index.html"),
        ],
    )
    dest = extract_archive(arc, box / "tree")
    assert listing(dest) == [
        "pkg",
        "pkg/assets",
        "pkg/assets/up",
        "pkg/bin",
        "pkg/bin/run",
        "pkg/copy.html",
        "pkg/index.html",
        "pkg/latest",
    ]
    assert stat.S_IMODE(os.stat(dest / "pkg/bin/run").st_mode) == 0o755  # no setuid, no world-write
    assert stat.S_IMODE(os.stat(dest / "pkg/index.html").st_mode) == 0o644
    assert os.stat(dest / "pkg/index.html").st_mtime == MTIME
    assert os.readlink(dest / "pkg/latest") == "index.html"
    assert (dest / "pkg/assets/up").read_bytes() == b"<h1>hi</h1>"
    assert os.stat(dest / "pkg/copy.html").st_ino == os.stat(dest / "pkg/index.html").st_ino
    assert listing(box) == ["tree"] + [f"tree/{p}" for p in listing(dest)]  # no staging left


def test_strip_components_like_npm(box):
    arc = make_tar(
        box.parent / "p.tgz",
        [
            _info("package/package.json", data=b"{}"),
            _info("package/lib/a.js", data=b"1"),
            _info("package/", tarfile.DIRTYPE),
        ],
    )
    dest = extract_archive(arc, box / "t", strip_components=1)
    assert listing(dest) == ["lib", "lib/a.js", "package.json"]


def test_good_zip(box):
    arc = make_zip(
        box.parent / "w.zip",
        [
            ("w/", b"", stat.S_IFDIR | 0o755),
            ("w/a.txt", b"A", stat.S_IFREG | 0o644),
            ("w/l", b"a.txt", stat.S_IFLNK | 0o777),
            ("b.txt", b"B", 0),
        ],
    )
    dest = extract_archive(arc, box / "z")
    assert (dest / "w/a.txt").read_text() == "A" and (dest / "b.txt").read_text() == "B"
    assert os.readlink(dest / "w/l") == "a.txt"


def test_kinds():
    assert kind_from_name("widgets-1.2.tar.gz") == "tar.gz" and kind_from_name("a.TGZ") == "tar.gz"
    assert kind_from_name("a.zip") == "zip" and kind_from_name("a.js") is None


HOSTILE_TARS = {
    "dotdot": [_info("ok.txt", data=b"ok"), _info("../evil.txt", data=b"pwned")],
    "nested-dotdot": [_info("a/b/../../../evil.txt", data=b"pwned")],
    "absolute": [_info("/tmp/playbook-evil-abs.txt", data=b"pwned")],
    "symlink-escape": [_info("a/l", tarfile.SYMTYPE, link="../../outside")],
    "symlink-absolute": [_info("l", tarfile.SYMTYPE, link="/etc")],
    "write-through-symlink": [_info("l", tarfile.SYMTYPE, link="."), _info("l/x.txt", data=b"x")],
    "symlink-via-symlink": [_info("a", tarfile.SYMTYPE, link="."), _info("b", tarfile.SYMTYPE, link="a/x/../..")],
    "symlink-then-file": [_info("escape", tarfile.SYMTYPE, link="../.."), _info("escape/evil.txt", data=b"pwned")],
    "hardlink-escape": [_info("h", tarfile.LNKTYPE, link="../outside.txt")],
    "hardlink-absolute": [_info("h", tarfile.LNKTYPE, link="/etc/passwd")],
    "hardlink-missing": [_info("h", tarfile.LNKTYPE, link="not-there")],
    "hardlink-to-symlink": [_info("s", tarfile.SYMTYPE, link="x"), _info("h", tarfile.LNKTYPE, link="s")],
    "chardev": [_info("dev/null", tarfile.CHRTYPE)],
    "blockdev": [_info("dev/sda", tarfile.BLKTYPE)],
    "fifo": [_info("pipe", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_is_rejected_and_leaves_nothing(box, case):
    outside = box.parent / "outside.txt"
    outside.write_text("original")
    arc = make_tar(box.parent / f"{case}.tar.gz", [_info("first.txt", data=b"1")] + HOSTILE_TARS[case])
    with pytest.raises(UnsafeEntry) as err:
        extract_archive(arc, box / "tree", label=f"widgets {case}")
    assert f"widgets {case}" in str(err.value) and err.value.entry in str(err.value)
    assert isinstance(err.value, ExtractError)
    assert listing(box) == []  # no staging dir, no half tree
    assert outside.read_text() == "original"
    assert sorted(p.name for p in box.parent.iterdir()) == sorted(["work", "outside.txt", f"{case}.tar.gz"])
    assert not os.path.exists("/tmp/playbook-evil-abs.txt")


@pytest.mark.parametrize(
    "entries",
    [
        [("../evil.txt", b"x", 0)],
        [("a\\..\\..\\evil.txt", b"x", 0)],
        [("/abs.txt", b"x", 0)],
        [("C:/windows.txt", b"x", 0)],
        [("l", b"/etc/passwd", stat.S_IFLNK | 0o777)],
        [("l", b"../../x", stat.S_IFLNK | 0o777)],
        [("fifo", b"", stat.S_IFIFO | 0o644)],
    ],
    ids=["dotdot", "backslash-dotdot", "absolute", "drive", "symlink-absolute", "symlink-escape", "fifo"],
)
def test_hostile_zip_is_rejected(box, entries):
    arc = make_zip(box.parent / "bad.zip", [("fine.txt", b"ok", 0)] + entries)
    with pytest.raises(UnsafeEntry, match="bad.zip"):
        extract_archive(arc, box / "tree")
    assert listing(box) == []


def test_corrupt_archive_and_existing_dest(box):
    bad = box.parent / "bad.tar.gz"
    good = make_tar(box.parent / "good.tar.gz", [_info("a", data=b"a" * 5000)])
    bad.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ExtractError, match="bad.tar.gz: corrupt"):
        extract_archive(bad, box / "tree")
    assert listing(box) == []
    (box / "tree").mkdir()
    with pytest.raises(ExtractError, match="already exists"):
        extract_archive(good, box / "tree")
    notarc = box.parent / "x.bin"
    notarc.write_bytes(b"hello")
    assert detect_kind(notarc) is None
    with pytest.raises(ExtractError, match="not a tar or zip"):
        extract_archive(notarc, box / "t2")


def test_size_limit(box):
    arc = make_tar(box.parent / "big.tar.gz", [_info("a", data=b"\0" * 100_000)])
    with pytest.raises(ExtractError, match="more than its extraction budget of 1000 bytes"):
        extract_archive(arc, box / "tree", max_bytes=1000)
    assert listing(box) == []
