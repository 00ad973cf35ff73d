"""The controller's artifact cache: verified artifacts by digest, and digests themselves.

**Cache.** Fetched artifacts live under `<state_dir>/cache/<algo>/<hex>/`, keyed by the digest
of their bytes and nothing else (never by `name@version`: npm's 1.0.0 can be republished with
other bytes, an S3 key can be overwritten). An entry directory holds `blob` (the verified bytes)
and, once extracted, `tree/` (or `tree-strip1/` for npm's `package/` prefix). Entries appear
whole or not at all: bytes are streamed into `cache/tmp/`, hashed on the way, compared with the
expected digest, and only then renamed into place; extraction goes through a staging directory
(modules/_support/extract.py). Two runs fetching the same artifact at once both end with the same entry.

**Verified on every use.** The cache is on disk and can be changed behind the engine's back, so
a hit is untrusted until checked: `verify` re-hashes the blob (a wrong one is removed, so the
caller fetches it again), and `tree` compares an extracted tree with `tree.manifest.json`,
written when it was extracted, and extracts it again when anything differs. Both tell the
caller's `on_damage` what they found, for a warning line.

The record of what each source deployed is engine/record/deployed.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from engine.connection import children
from engine.errors import ModuleError
from engine.model import jsonable
from modules._support.manifest import DigestCache, Entry, local_manifest

__all__ = [
    "DigestMismatch",
    "Digest",
    "ArtifactCache",
    "sri_to_digest",
    "digest_to_sri",
]

_HEX = {"sha256": 64, "sha512": 128}


class DigestMismatch(ModuleError):
    """Fetched bytes are not the bytes expected. Names the artifact and both digests."""

    def __init__(self, artifact: str, expected: str, actual: str, *, source_of_expected: str = "expected") -> None:
        self.artifact = artifact
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{artifact}: digest mismatch: {source_of_expected} {expected}, but the downloaded bytes are "
            f"{actual}; nothing was extracted or deployed"
        )


class Digest:
    """A content digest: algorithm plus hex, shown as `sha256:<hex>`; npm's SRI via `sri()`."""

    __slots__ = ("algo", "hex")

    def __init__(self, algo: str, hexdigest: str) -> None:
        if algo not in _HEX or len(hexdigest) != _HEX[algo] or not re.fullmatch(r"[0-9a-f]+", hexdigest):
            raise ValueError(
                f"'digest' must be {algo} as {_HEX.get(algo, '?')} lowercase hex digits (got {hexdigest!r})"
            )
        self.algo = algo
        self.hex = hexdigest

    def __str__(self) -> str:
        return f"{self.algo}:{self.hex}"

    def __repr__(self) -> str:
        return f"Digest({self})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Digest) and (self.algo, self.hex) == (other.algo, other.hex)

    def __hash__(self) -> int:
        return hash((self.algo, self.hex))

    def sri(self) -> str:
        """Subresource-integrity form, as npm's `dist.integrity` writes it (`sha512-<base64>`)."""
        return digest_to_sri(self)


def sri_to_digest(sri: str) -> Digest:
    """Parse an SRI string (`sha512-<base64>`; of several, the strongest) into a `Digest`."""
    best: Digest | None = None
    for token in sri.split():
        algo, _, b64 = token.partition("-")
        if algo not in _HEX:
            continue
        try:
            raw = base64.b64decode(b64.split("?")[0], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"invalid integrity {token!r}: not base64") from None
        d = Digest(algo, raw.hex())
        if best is None or _HEX[algo] > _HEX[best.algo]:
            best = d
    if best is None:
        raise ValueError(f"invalid integrity {sri!r}: expected 'sha512-<base64>'")
    return best


def digest_to_sri(d: Digest) -> str:
    return f"{d.algo}-{base64.b64encode(bytes.fromhex(d.hex)).decode()}"


class ArtifactCache:
    """`<state_dir>/cache`: verified artifacts by digest. Safe for concurrent use by several runs."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir) / "cache"

    def entry(self, digest: Digest) -> Path:
        return self.root / digest.algo / digest.hex

    def blob(self, digest: Digest) -> Path | None:
        """The cached bytes of `digest`, or None when not cached."""
        path = self.entry(digest) / "blob"
        return path if path.is_file() else None

    def store(
        self,
        chunks: Iterable[bytes],
        *,
        algo: str,
        expected: Digest | None,
        artifact: str,
        expected_from: str = "expected",
    ) -> tuple[Digest, Path]:
        """Stream `chunks` into the cache, hashing with `algo`; return (digest, blob path).

        With `expected`, bytes that hash differently raise `DigestMismatch` (naming `artifact`,
        what was expected - `expected_from` says who claimed it - and what arrived) and are
        discarded: nothing appears in the cache.
        """
        tmp_dir = self.root / "tmp"
        h = hashlib.new(algo)
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix="fetch-", dir=tmp_dir)
        except OSError as exc:
            raise self._write_error(exc, artifact) from None
        try:
            try:
                with os.fdopen(fd, "wb") as out:
                    for chunk in chunks:
                        children.check_abort()  # a second Ctrl-C stops a download at once
                        h.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:
                raise self._write_error(exc, artifact) from None
            actual = Digest(algo, h.hexdigest())
            if expected is not None and actual != expected:
                raise DigestMismatch(artifact, _show(expected), _show(actual), source_of_expected=expected_from)
            entry = self.entry(actual)
            if not (entry / "blob").is_file():
                entry.parent.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(prefix=f".{actual.hex[:16]}-", dir=entry.parent))
                try:
                    os.chmod(tmp, 0o644)
                    os.rename(tmp, staging / "blob")
                    try:
                        os.rename(staging, entry)
                    except OSError:  # another run stored the same bytes first: same content
                        if not (entry / "blob").is_file():
                            raise
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
            return actual, entry / "blob"
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _write_error(self, exc: OSError, artifact: str) -> ModuleError:
        from modules._support.extract import disk_full

        why = disk_full(exc) or exc.strerror or str(exc)
        return ModuleError(f"{artifact}: cannot write to the artifact cache {self.root}: {why}")

    def tree(
        self,
        digest: Digest,
        *,
        kind: str | None = None,
        strip_components: int = 0,
        label: str = "",
        max_bytes: int | None = None,
        on_damage: Callable[[str], None] | None = None,
    ) -> Path:
        """The extracted tree of a cached archive, extracting it (safely) on first use.

        A tree already there is compared with the manifest recorded when it was extracted
        (names, kinds, modes, sizes, mtimes, sha256 of every file): a tree changed since - by
        hand, by a tool, by a half-finished copy - is never handed out. It is extracted again
        from the blob (which the caller verified), and `on_damage` is told what differed."""
        blob = self.blob(digest)
        if blob is None:
            raise ModuleError(f"{label or digest}: not in the artifact cache")
        name = "tree" if not strip_components else f"tree-strip{strip_components}"
        dest = self.entry(digest) / name
        if dest.is_dir():
            problem = _tree_problem(dest, self.entry(digest) / f"{name}.manifest.json", self.root)
            if problem is None:
                return dest
            if on_damage is not None and problem:  # "": no manifest (an older cache), just extract again
                on_damage(
                    f"{label or digest}: the cached extracted tree {dest} {problem}; "
                    "extracting it again from the verified archive"
                )
            _remove_aside(dest)
        from modules._support.extract import extract_archive  # tarfile/zipfile: only when something is extracted

        staging = self.entry(digest) / f".{name}-{secrets.token_hex(6)}"
        try:
            extract_archive(
                blob,
                staging,
                kind=kind,
                strip_components=strip_components,
                label=label or str(blob),
                **({"max_bytes": max_bytes} if max_bytes is not None else {}),
            )
            try:
                seen = DigestCache(None)
                _write_json(
                    self.entry(digest) / f"{name}.manifest.json",
                    _listing(local_manifest(str(staging), digest_cache=seen)),
                )
                # the files keep their inode and ctime through the rename: their digests hold for
                # `dest` too, so the first check after extraction reads nothing again
                digests = _digests(dest, self.root)
                prefix = os.path.abspath(staging)
                digests.entries = {os.path.abspath(dest) + k[len(prefix) :]: v for k, v in seen.entries.items()}
                digests.dirty = True
                digests.save()
            except OSError as exc:
                raise self._write_error(exc, label or str(digest)) from None
            try:
                os.rename(staging, dest)
            except OSError:  # extracted concurrently by another run: the same bytes, the same tree
                if not dest.is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest

    def verify(self, digest: Digest, *, on_damage: Callable[[str], None] | None = None) -> bool:
        """Re-hash a cached blob (a cache on disk can be damaged or tampered with): True when
        it has the bytes of `digest`. A wrong entry is removed - `on_damage` is told - so the
        caller fetches it again; False also when there is no entry."""
        blob = self.blob(digest)
        if blob is None:
            return False
        h = hashlib.new(digest.algo)
        with open(blob, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() == digest.hex:
            return True
        _remove_aside(self.entry(digest))
        if on_damage is not None:
            actual = _show(Digest(digest.algo, h.hexdigest()))
            on_damage(
                f"the cached bytes of {_show(digest)} were changed on disk (they hash to {actual}); "
                "the cache entry was removed and the artifact is fetched again"
            )
        return False


def _listing(manifest: dict[str, Entry]) -> dict[str, list[object]]:
    return {rel: [e.kind, e.mode, e.size, e.mtime, e.sha256, e.target] for rel, e in manifest.items()}


def _digests(tree: Path, cache_root: Path) -> DigestCache:
    """The file digests of `tree`, reused by (size, mtime, ctime, inode) - the same file as the
    rsync module's manifest of that tree uses: any write to a file changes its ctime, so a
    changed file is read again."""
    key = hashlib.sha256(os.path.abspath(tree).encode()).hexdigest()[:24]
    return DigestCache(str(cache_root / f"digests-{key}.json"))


def _tree_problem(tree: Path, record: Path, cache_root: Path) -> str | None:
    """None when `tree` is what `record` says was extracted, else what differs, in words ("" when
    there is no record: a tree cached before records were kept, extracted again unannounced)."""
    try:
        with open(record, encoding="utf-8") as fh:
            want = jsonable.loads(fh.read())
    except FileNotFoundError:
        return ""
    except (OSError, ValueError):
        return "has no readable manifest of its extraction"
    if not isinstance(want, dict):
        return "has no readable manifest of its extraction"
    digests = _digests(tree, cache_root)
    have = _listing(local_manifest(str(tree), digest_cache=digests))
    try:
        digests.save()
    except OSError:  # a read-only state dir only costs speed
        pass
    have_j = json.loads(json.dumps(have))
    if have_j == want:
        return None
    changed = sorted(r for r in have_j.keys() & want.keys() if have_j[r] != want[r])
    added = sorted(have_j.keys() - want.keys())
    missing = sorted(want.keys() - have_j.keys())
    parts = [
        f"{what}: {_few(paths)}"
        for what, paths in (("changed", changed), ("added", added), ("missing", missing))
        if paths
    ]
    return "was modified since it was extracted (" + "; ".join(parts) + ")"


def _few(paths: list[str], n: int = 3) -> str:
    return ", ".join(paths[:n]) + (f" and {len(paths) - n} more" if len(paths) > n else "")


def _remove_aside(path: Path) -> None:
    """Take `path` out of the cache at once (rename), then delete it."""
    aside = path.parent / f".{path.name}.removed-{secrets.token_hex(6)}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _write_json(path: Path, data: object) -> None:
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True)
    os.replace(tmp, path)


def _show(d: Digest) -> str:
    return d.sri() if d.algo == "sha512" else str(d)
