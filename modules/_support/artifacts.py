"""The controller's artifact cache and the record of deployed artifact digests.

**Cache.** Fetched artifacts live under `<state_dir>/cache/<algo>/<hex>/`, keyed by the digest
of their bytes and nothing else (never by `name@version`: npm's 1.0.0 can be republished with
other bytes, an S3 key can be overwritten). An entry directory holds `blob` (the verified bytes)
and, once extracted, `tree/` (or `tree-strip1/` for npm's `package/` prefix). Entries appear
whole or not at all: bytes are streamed into `cache/tmp/`, hashed on the way, compared with the
expected digest, and only then renamed into place; extraction goes through a staging directory
(modules/_support/extract.py). Two runs fetching the same artifact at once both end with the same entry.

**Record.** `<state_dir>/artifacts/<playbook>/<source>.json` keeps the history of what each
source of a playbook deployed: `{"digest", "version", "time", "run_id", ...}` entries, oldest
first. `last_deployed` reads the newest; source modules compare with it to say "no change" or
"1.0.0 republished: A → B", and a rollback can fetch the exact bytes again by digest.
`ArtifactRecorder` writes it from the events of a successful run.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from engine.errors import ModuleError
from engine.model.events import Event, RunFinished
from engine.model.results import Status, UnknownValue

__all__ = [
    "DigestMismatch",
    "Digest",
    "ArtifactCache",
    "record_path",
    "history",
    "last_deployed",
    "record_deployed",
    "ArtifactRecorder",
    "sri_to_digest",
    "digest_to_sri",
]

HISTORY_KEEP = 200  # entries per source; older ones are dropped
_HEX = {"sha256": 64, "sha512": 128}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.@+-]")


class DigestMismatch(ModuleError):
    """Fetched bytes are not the bytes expected. Names the artifact and both digests."""

    def __init__(self, artifact: str, expected: str, actual: str, *, source_of_expected: str = "expected") -> None:
        self.artifact = artifact
        self.expected = expected
        self.actual = actual
        super().__init__(f"{artifact}: digest mismatch: {source_of_expected} {expected}, but the downloaded bytes are "
                         f"{actual}; nothing was extracted or deployed")


class Digest:
    """A content digest: algorithm plus hex, shown as `sha256:<hex>`; npm's SRI via `sri()`."""

    __slots__ = ("algo", "hex")

    def __init__(self, algo: str, hexdigest: str) -> None:
        if algo not in _HEX or len(hexdigest) != _HEX[algo] or not re.fullmatch(r"[0-9a-f]+", hexdigest):
            raise ValueError(f"'digest' must be {algo} as {_HEX.get(algo, '?')} lowercase hex digits (got {hexdigest!r})")
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


# -- the content-addressed cache -----------------------------------------------------------------


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

    def store(self, chunks: Iterable[bytes], *, algo: str, expected: Digest | None, artifact: str,
              expected_from: str = "expected") -> tuple[Digest, Path]:
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


# -- the deployed-digest record ------------------------------------------------------------------


def record_path(state_dir: str | os.PathLike[str], playbook: str, source: str) -> Path:
    """`<state_dir>/artifacts/<playbook>/<source>.json` (names made filesystem-safe)."""
    return Path(state_dir) / "artifacts" / _SAFE_NAME.sub("_", playbook) / f"{_SAFE_NAME.sub('_', source)}.json"


def history(state_dir: str | os.PathLike[str], playbook: str, source: str) -> list[dict[str, Any]]:
    """Every recorded deployment of a source, oldest first (empty when none)."""
    path = record_path(state_dir, playbook, source)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ModuleError(f"artifact record {path} is unreadable: {exc}") from None
    entries = data.get("history") if isinstance(data, dict) else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def last_deployed(state_dir: str | os.PathLike[str], playbook: str, source: str) -> dict[str, Any] | None:
    """The newest recorded deployment of a source (`digest`, `version`, `time`, `run_id`), or None."""
    entries = history(state_dir, playbook, source)
    return entries[-1] if entries else None


def record_deployed(state_dir: str | os.PathLike[str], playbook: str, source: str, *, digest: str,
                    version: Any = None, run_id: str = "", extra: Mapping[str, Any] | None = None,
                    now: float | None = None) -> dict[str, Any]:
    """Append a deployment to a source's history (atomically: temp file + rename)."""
    path = record_path(state_dir, playbook, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = history(state_dir, playbook, source)
    entry: dict[str, Any] = {"digest": digest, "version": version, "time": now if now is not None else time.time(),
                             "run_id": run_id}
    for k, v in (extra or {}).items():
        entry.setdefault(k, v)
    entries.append(entry)
    doc = {"playbook": playbook, "source": source, "history": entries[-HISTORY_KEEP:]}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1, default=str)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return entry


_RECORDED_EXTRA = ("uri", "integrity", "tarball", "package", "version_id")


class ArtifactRecorder:
    """Event subscriber: after a successful run, records the digest of every source step.

    Register it with the run's subscribers: `ArtifactRecorder(state_dir, playbook_name)`. On
    `RunFinished` of a run (mode "run") whose exit code is 0, each `sources.<name>` result with a
    `digest` output is appended to `<state_dir>/artifacts/<playbook_name>/<name>.json` unless the
    newest entry already has that digest and version. A failed or interrupted run records
    nothing: its artifacts were not (completely) deployed.
    """

    def __init__(self, state_dir: str | os.PathLike[str], playbook_name: str,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.state_dir = state_dir
        self.playbook = playbook_name
        self.on_error = on_error
        self.recorded: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: Event) -> None:
        if not isinstance(event, RunFinished):
            return
        summary = event.summary
        if getattr(summary, "mode", None) != "run" or summary.exit_code() != 0:
            return
        for result in summary.results:
            if result.host is not None or not result.step.startswith("sources."):
                continue
            if result.status not in (Status.OK, Status.CHANGED):
                continue
            outs = result.outputs or {}
            digest = outs.get("digest")
            if not isinstance(digest, str) or not digest:
                continue
            source = result.step[len("sources."):]
            version = outs.get("version")
            if isinstance(version, UnknownValue):
                version = None
            try:
                last = last_deployed(self.state_dir, self.playbook, source)
                if last and last.get("digest") == digest and last.get("version") == version:
                    continue
                extra = {k: outs[k] for k in _RECORDED_EXTRA if isinstance(outs.get(k), (str, int, float))}
                entry = record_deployed(self.state_dir, self.playbook, source, digest=digest, version=version,
                                        run_id=summary.run_id, extra=extra)
                self.recorded.append((source, entry))
            except (OSError, ModuleError) as exc:  # the deploy happened; a broken record must not hide it
                if self.on_error is not None:
                    self.on_error(f"could not record artifact of source '{source}': {exc}")
