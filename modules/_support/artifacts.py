"""The controller's artifact cache: verified artifacts by digest, and digests themselves.

**Cache.** Fetched artifacts live under `<state_dir>/cache/<algo>/<hex>/`, keyed by the digest
of their bytes and nothing else (never by `name@version`: npm's 1.0.0 can be republished with
other bytes, an S3 key can be overwritten). An entry directory holds `blob` (the verified bytes)
and, once extracted, `tree/` (or `tree-strip1/` for npm's `package/` prefix). Entries appear
whole or not at all: bytes are streamed into `cache/tmp/`, hashed on the way, compared with the
expected digest, and only then renamed into place; extraction goes through a staging directory
(modules/_support/extract.py). Two runs fetching the same artifact at once both end with the same entry.

The record of what each source deployed is engine/record/deployed.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from engine.connection import children
from engine.errors import ModuleError

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
        tmp_dir.mkdir(parents=True, exist_ok=True)
        h = hashlib.new(algo)
        fd, tmp = tempfile.mkstemp(prefix="fetch-", dir=tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    children.check_abort()  # a second Ctrl-C stops a download at once
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
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

    def tree(self, digest: Digest, *, kind: str | None = None, strip_components: int = 0, label: str = "") -> Path:
        """The extracted tree of a cached archive, extracting it (safely) on first use."""
        blob = self.blob(digest)
        if blob is None:
            raise ModuleError(f"{label or digest}: not in the artifact cache")
        name = "tree" if not strip_components else f"tree-strip{strip_components}"
        dest = self.entry(digest) / name
        if dest.is_dir():
            return dest
        from modules._support.extract import extract_archive  # tarfile/zipfile: only when something is extracted

        try:
            return extract_archive(blob, dest, kind=kind, strip_components=strip_components, label=label or str(blob))
        except ModuleError:
            if dest.is_dir():  # extracted concurrently by another run
                return dest
            raise

    def verify(self, digest: Digest) -> bool:
        """Re-hash a cached blob (a cache on disk can be damaged); drop the entry when it is wrong."""
        blob = self.blob(digest)
        if blob is None:
            return False
        h = hashlib.new(digest.algo)
        with open(blob, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() == digest.hex:
            return True
        shutil.rmtree(self.entry(digest), ignore_errors=True)
        return False


def _show(d: Digest) -> str:
    return d.sri() if d.algo == "sha512" else str(d)
