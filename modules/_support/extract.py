"""Safe extraction of tar (plain, gzip, bzip2, xz) and zip archives.

An archive is untrusted input: a fetched widget bundle or npm tarball must not be able to write
outside its destination (CVE-2007-4559 and its many cousins: `../` entries, absolute names,
symlinks or hard links that lead out, then an entry written *through* such a link) nor create
device files. Rather than trusting `tarfile.extractall`, every entry is checked and written here:

- names must be relative and must not contain `..` (backslashes count as separators, so a zip
  made on Windows cannot sneak `..\\` past the check);
- only regular files, directories, symlinks and hard links are accepted; devices, fifos and
  sockets are rejected;
- a symlink's target must stay inside the tree, checked on the name and again, once everything is
  written, on the real filesystem (`realpath`), because a target may traverse other links;
- no entry is ever written through a symlink (each parent directory is checked with `lstat`, and
  files are opened with `O_NOFOLLOW | O_EXCL`);
- a hard link must name a regular file extracted earlier in the same archive;
- modes are normalised (0644, or 0755 when any execute bit is set; directories 0755): no setuid,
  no world-writable files from an archive.

Everything is written into a fresh staging directory next to `dest` which is renamed into place
only when the whole archive passed; on any failure the staging directory is removed, so nothing
is left behind and `dest` never holds half an archive.

Longer than ~400 lines: each check sits beside the write it guards; tar and zip are the split
if it grows.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from engine.errors import ModuleError

__all__ = [
    "ExtractError",
    "UnsafeEntry",
    "detect_kind",
    "kind_from_name",
    "extract_archive",
    "KINDS",
    "default_budget",
    "disk_full",
]

KINDS = ("tar", "tar.gz", "tar.bz2", "tar.xz", "zip")
MAX_TOTAL_BYTES = 4 * 1024**3  # an archive that expands past this is a bomb, not a deploy
#: the default extraction budget: RATIO times the archive's size, at least FLOOR, at most MAX_TOTAL_BYTES
BUDGET_RATIO = 200
BUDGET_FLOOR = 256 * 1024**2
MAX_ENTRIES = 500_000
_CHUNK = 1 << 20


class ExtractError(ModuleError):
    """An archive could not be extracted. `archive` names it; `entry` the entry at fault, if any."""

    def __init__(self, message: str, *, archive: str, entry: str = "") -> None:
        self.archive = archive
        self.entry = entry
        super().__init__(message)


class UnsafeEntry(ExtractError):
    """An archive entry would escape the destination or is of a forbidden type."""


@dataclass(frozen=True)
class _Entry:
    """One archive member, reduced to what extraction needs."""

    name: str  # as written in the archive (for messages)
    parts: tuple[str, ...]  # normalised relative path, after stripping
    kind: str  # "file" | "dir" | "symlink" | "hardlink"
    mode: int
    mtime: float
    link: str = ""  # symlink target, or hard link source (archive name)
    size: int = 0


def default_budget(archive_size: int) -> int:
    """How many bytes an archive of `archive_size` bytes may expand to unless told otherwise."""
    return min(MAX_TOTAL_BYTES, max(BUDGET_FLOOR, BUDGET_RATIO * archive_size))


def _mib(n: int) -> str:
    if n < 1024**2:
        return f"{n} bytes"
    return f"{n / 1024**2:.1f} MiB" if n < 1024**3 else f"{n / 1024**3:.1f} GiB"


def disk_full(exc: OSError) -> str | None:
    """What a write failure means when the disk (or the process's file size limit) is full."""
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded (no space left for this user)"
    if exc.errno == errno.EFBIG:
        return "file too large: this process's file size limit (RLIMIT_FSIZE, `ulimit -f`) was reached"
    return None


def kind_from_name(name: str) -> str | None:
    """The archive kind a file name suggests (`x.tgz` -> `tar.gz`), or None for other files."""
    low = name.lower()
    for suffix, kind in (
        (".tar.gz", "tar.gz"),
        (".tgz", "tar.gz"),
        (".tar.bz2", "tar.bz2"),
        (".tbz2", "tar.bz2"),
        (".tar.xz", "tar.xz"),
        (".txz", "tar.xz"),
        (".tar", "tar"),
        (".zip", "zip"),
    ):
        if low.endswith(suffix):
            return kind
    return None


def detect_kind(path: str | os.PathLike[str]) -> str | None:
    """The archive kind by its first bytes (magic numbers), or None when it is no known archive."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head.startswith(b"BZh"):
        return "tar.bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "tar.xz"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def extract_archive(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    kind: str | None = None,
    strip_components: int = 0,
    label: str | None = None,
    max_bytes: int | None = None,
) -> Path:
    """Extract `archive` into the directory `dest`, which must not exist yet, and return `dest`.

    `kind` is one of `KINDS` (default: detected from the archive's first bytes). With
    `strip_components` the first N path components of every entry are dropped (npm tarballs
    put everything under `package/`); entries that are only those components are skipped.
    `label` names the archive in errors (default: its path). `max_bytes` is the extraction
    budget, the total size the entries may expand to (default: `default_budget`). Raises
    `UnsafeEntry` for a hostile entry and `ExtractError` for anything else - a full disk says so
    - and `dest` is then left untouched.
    """
    archive = Path(archive)
    dest = Path(dest)
    what = label or str(archive)
    if kind is None:
        kind = detect_kind(archive)
        if kind is None:
            raise ExtractError(f"{what}: not a tar or zip archive", archive=what)
    if kind not in KINDS:
        raise ExtractError(f"{what}: unknown archive kind {kind!r} (expected one of {', '.join(KINDS)})", archive=what)
    if os.path.lexists(dest):
        raise ExtractError(f"{what}: destination {dest} already exists", archive=what)
    if max_bytes is None:
        size = os.path.getsize(archive)
        budget = default_budget(size)
        how = f"{BUDGET_RATIO} times the archive's {_mib(size)}, at least {_mib(BUDGET_FLOOR)}, at most {_mib(MAX_TOTAL_BYTES)}"
    else:
        budget, how = max_bytes, "as set by max_unpacked_mib"
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        writer = _Writer(staging, what, budget, how)
        if kind == "zip":
            _extract_zip(archive, writer, strip_components, what)
        else:
            _extract_tar(archive, kind, writer, strip_components, what)
        writer.finish()
        os.chmod(staging, 0o755)
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


# -- reading archives ----------------------------------------------------------------------------


def _split(name: str, what: str, strip: int) -> tuple[str, ...] | None:
    """Normalised path components of an entry name; None when stripping leaves nothing."""
    if "\x00" in name:
        raise UnsafeEntry(f"{what}: entry {name!r} has a NUL byte in its name", archive=what, entry=name)
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":" and unified[0].isalpha()):
        raise UnsafeEntry(f"{what}: entry {name!r} has an absolute path", archive=what, entry=name)
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeEntry(f"{what}: entry {name!r} contains '..'", archive=what, entry=name)
    parts = parts[strip:]
    return tuple(parts) if parts else None


def _tar_entries(tf: tarfile.TarFile, what: str, strip: int) -> Iterator[tuple[_Entry, tarfile.TarInfo]]:
    count = 0
    for info in tf:
        count += 1
        if count > MAX_ENTRIES:
            raise ExtractError(f"{what}: more than {MAX_ENTRIES} entries", archive=what)
        parts = _split(info.name, what, strip)
        if parts is None:
            continue
        if info.isreg():
            kind = "file"
        elif info.isdir():
            kind = "dir"
        elif info.issym():
            kind = "symlink"
        elif info.islnk():
            kind = "hardlink"
        else:
            label = {
                tarfile.CHRTYPE: "a character device",
                tarfile.BLKTYPE: "a block device",
                tarfile.FIFOTYPE: "a fifo",
            }.get(info.type, f"of unsupported type {info.type!r}")
            raise UnsafeEntry(f"{what}: entry {info.name!r} is {label}", archive=what, entry=info.name)
        yield _Entry(info.name, parts, kind, info.mode, float(info.mtime), info.linkname, info.size), info


def _extract_tar(archive: Path, kind: str, writer: _Writer, strip: int, what: str) -> None:
    modes: dict[str, Literal["r:", "r:gz", "r:bz2", "r:xz"]] = {
        "tar": "r:",
        "tar.gz": "r:gz",
        "tar.bz2": "r:bz2",
        "tar.xz": "r:xz",
    }
    mode = modes[kind]
    try:
        with tarfile.open(archive, mode) as tf:
            for entry, info in _tar_entries(tf, what, strip):
                if entry.kind == "file":
                    src = tf.extractfile(info)
                    if src is None:
                        raise ExtractError(
                            f"{what}: entry {entry.name!r} cannot be read", archive=what, entry=entry.name
                        )
                    with src:
                        writer.file(entry, src)
                elif entry.kind == "hardlink":
                    target = _split(entry.link, what, strip) if entry.link else None
                    if target is None:
                        raise UnsafeEntry(
                            f"{what}: hard link {entry.name!r} -> {entry.link!r} points outside the tree",
                            archive=what,
                            entry=entry.name,
                        )
                    writer.hardlink(entry, target)
                else:
                    writer.other(entry)
    except ExtractError:
        raise
    except OSError as exc:
        if (full := disk_full(exc)) is not None:
            raise ExtractError(f"{what}: cannot extract into {writer.root.parent}: {full}", archive=what) from None
        raise ExtractError(f"{what}: corrupt or unreadable archive: {exc}", archive=what) from None
    except (tarfile.TarError, EOFError, ValueError) as exc:  # gzip/lzma/bz2 errors are OSError or ValueError
        raise ExtractError(f"{what}: corrupt or unreadable archive: {exc}", archive=what) from None


def _extract_zip(archive: Path, writer: _Writer, strip: int, what: str) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ENTRIES:
                raise ExtractError(f"{what}: more than {MAX_ENTRIES} entries", archive=what)
            for info in infos:
                parts = _split(info.filename, what, strip)
                if parts is None:
                    continue
                unix = info.external_attr >> 16
                fmt = stat.S_IFMT(unix)
                mtime = time.mktime(info.date_time + (0, 0, -1)) if info.date_time[0] >= 1980 else 0.0
                if info.is_dir() or fmt == stat.S_IFDIR:
                    writer.other(_Entry(info.filename, parts, "dir", unix & 0o7777 or 0o755, mtime))
                elif fmt == stat.S_IFLNK:
                    if info.file_size > 4096:
                        raise UnsafeEntry(
                            f"{what}: symlink {info.filename!r} has an oversized target",
                            archive=what,
                            entry=info.filename,
                        )
                    target = zf.read(info).decode("utf-8", "surrogateescape")
                    writer.other(_Entry(info.filename, parts, "symlink", 0o777, mtime, target))
                elif fmt in (0, stat.S_IFREG):
                    with zf.open(info) as src:
                        writer.file(
                            _Entry(info.filename, parts, "file", unix & 0o7777 or 0o644, mtime, size=info.file_size),
                            src,
                        )
                else:
                    raise UnsafeEntry(
                        f"{what}: entry {info.filename!r} is a special file (mode {oct(unix)})",
                        archive=what,
                        entry=info.filename,
                    )
    except ExtractError:
        raise
    except OSError as exc:
        if (full := disk_full(exc)) is not None:
            raise ExtractError(f"{what}: cannot extract into {writer.root.parent}: {full}", archive=what) from None
        raise ExtractError(f"{what}: corrupt or unreadable archive: {exc}", archive=what) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise ExtractError(f"{what}: corrupt or unreadable archive: {exc}", archive=what) from None


# -- writing -------------------------------------------------------------------------------------


class _Writer:
    """Writes checked entries under `root`, never following a symlink on the way."""

    def __init__(self, root: Path, what: str, max_bytes: int, how: str) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.what = what
        self.max_bytes = max_bytes
        self.how = how
        self.total = 0
        self.links: list[tuple[_Entry, Path]] = []
        self.dir_times: dict[tuple[str, ...], float] = {}

    def _unsafe(self, entry: _Entry, why: str) -> UnsafeEntry:
        return UnsafeEntry(f"{self.what}: entry {entry.name!r} {why}", archive=self.what, entry=entry.name)

    def _parent(self, entry: _Entry) -> Path:
        """Create (or check) the parent directories of an entry; none may be a symlink."""
        cur = self.root
        for i, part in enumerate(entry.parts[:-1]):
            cur = cur / part
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                os.mkdir(cur, 0o755)
                continue
            if stat.S_ISLNK(st.st_mode):
                link = "/".join(entry.parts[: i + 1])
                raise self._unsafe(entry, f"would be written through the symlink '{link}'")
            if not stat.S_ISDIR(st.st_mode):
                raise self._unsafe(
                    entry, f"needs '{'/'.join(entry.parts[: i + 1])}' to be a directory, but it is a file"
                )
        return cur

    def _clear(self, entry: _Entry, path: Path) -> None:
        """A later entry replaces an earlier one of the same name (as tar does), except directories."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise self._unsafe(entry, "replaces a directory")
        os.unlink(path)

    def _over_budget(self, entry: _Entry) -> ExtractError:
        return ExtractError(
            f"{self.what}: expands to more than its extraction budget of {_mib(self.max_bytes)} ({self.how}); "
            "an archive bomb, or a genuinely large archive: then raise the source's `max_unpacked_mib`",
            archive=self.what,
            entry=entry.name,
        )

    def file(self, entry: _Entry, src: IO[bytes]) -> None:
        if self.total + entry.size > self.max_bytes:  # the size the entry declares: refused before writing
            raise self._over_budget(entry)
        path = self._parent(entry) / entry.parts[-1]
        self._clear(entry, path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = src.read(_CHUNK)
                if not chunk:
                    break
                self.total += len(chunk)
                if self.total > self.max_bytes:
                    raise self._over_budget(entry)
                out.write(chunk)
        os.chmod(path, 0o755 if entry.mode & 0o111 else 0o644)
        os.utime(path, (entry.mtime, entry.mtime))

    def hardlink(self, entry: _Entry, target: tuple[str, ...]) -> None:
        src = self.root.joinpath(*target)
        for i in range(1, len(target)):
            if os.path.islink(self.root.joinpath(*target[:i])):
                raise self._unsafe(entry, f"is a hard link through the symlink '{'/'.join(target[:i])}'")
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            raise self._unsafe(
                entry, f"is a hard link to '{entry.link}', which is not an earlier file of the archive"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise self._unsafe(entry, f"is a hard link to '{entry.link}', which is not a regular file")
        path = self._parent(entry) / entry.parts[-1]
        if path == src:
            return
        self._clear(entry, path)
        os.link(src, path, follow_symlinks=False)

    def other(self, entry: _Entry) -> None:
        if entry.kind == "dir":
            path = self._parent(entry) / entry.parts[-1]
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
            else:
                if not stat.S_ISDIR(st.st_mode):
                    raise self._unsafe(entry, "is a directory replacing a file or symlink")
            self.dir_times[entry.parts] = entry.mtime
            return
        # symlink: the target must be relative and stay inside the tree, judged from its directory
        target = entry.link
        if not target or "\x00" in target:
            raise self._unsafe(entry, "is a symlink with an empty or invalid target")
        if target.startswith("/") or target.replace("\\", "/").startswith("/"):
            raise self._unsafe(entry, f"is a symlink to the absolute path '{target}'")
        joined = posixpath.normpath(posixpath.join(*entry.parts[:-1], target) if len(entry.parts) > 1 else target)
        if joined == ".." or joined.startswith("../"):
            raise self._unsafe(entry, f"is a symlink to '{target}', outside the tree")
        path = self._parent(entry) / entry.parts[-1]
        self._clear(entry, path)
        os.symlink(target, path)
        self.links.append((entry, path))

    def finish(self) -> None:
        # A target may pass the name check yet lead out through another link (`a -> .` then
        # `b -> a/x/../..`): resolve every link on the real tree.
        for entry, path in self.links:
            real = os.path.realpath(path)
            if real != self.real_root and not real.startswith(self.real_root + os.sep):
                raise self._unsafe(entry, f"is a symlink to '{entry.link}', which resolves outside the tree")
        for parts, mtime in sorted(self.dir_times.items(), key=lambda kv: -len(kv[0])):
            os.utime(self.root.joinpath(*parts), (mtime, mtime), follow_symlinks=False)
