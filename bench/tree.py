"""The benchmark's artifact: a deterministic tree, its 1% mutation, and tree comparison.

`generate(path, seed)` always writes the same bytes, names and mtimes for the same seed: 2,000
files (~50 MB) in nested directories — many small text files, some medium binary files and a
few multi-MB ones. `mutate(src, dst, seed)` copies it and changes 1% of the files (20 edited,
one added, one removed). mtimes are fixed so rsync's size+mtime quick check behaves the same on
every machine; edited files get a later mtime, as a rebuilt artifact would.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["TreeSpec", "SmallTreeSpec", "generate", "mutate", "manifest", "compare", "Mutation", "DigestCache"]

BASE_MTIME = 1_704_067_200  # 2024-01-01T00:00:00Z
MUTATED_MTIME = BASE_MTIME + 86_400

_WORDS = (
    "deploy release fleet host rsync plan apply module template widget bundle canary cache "
    "config service web static asset image style script vendor build manifest index page "
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor"
).split()
_TEXT_EXT = [".php", ".js", ".css", ".html", ".json", ".md", ".txt", ".yml"]
_BIN_EXT = [".png", ".jpg", ".woff2", ".gz", ".bin"]


class TreeSpec:
    """Sizes of the generated tree (defaults: 2,000 files, about 50 MB)."""

    small = 1790  # text, 200 B .. 12 KB
    medium = 200  # binary, 40 .. 240 KB
    large = 10  # binary, 0.5 .. 2 MB
    edits = 20
    adds = 1
    removes = 1


class SmallTreeSpec(TreeSpec):
    """30 small files: for runs whose jobs never sync the tree (fan-out, steps; the smoke test)."""

    small = 30
    medium = 0
    large = 0


def _dirs(rng: random.Random) -> list[str]:
    out = [""]
    for a in range(8):
        da = f"{rng.choice(['app', 'lib', 'assets', 'public', 'vendor', 'src', 'themes', 'plugins'])}{a}"
        out.append(da)
        for b in range(rng.randint(2, 5)):
            db = f"{da}/{rng.choice(_WORDS)}{b}"
            out.append(db)
            for c in range(rng.randint(0, 4)):
                out.append(f"{db}/{rng.choice(_WORDS)}{c}")
    return out


def _text(rng: random.Random, size: int) -> bytes:
    words: list[str] = []
    n = 0
    while n < size:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 14)))
        words.append(line)
        n += len(line) + 1
    return ("\n".join(words)[:size] + "\n").encode()


def _plan(seed: int, spec: type[TreeSpec] = TreeSpec) -> list[tuple[str, str, int]]:
    """[(relpath, kind, size)] — the tree's shape, from the seed alone."""
    rng = random.Random(seed)
    dirs = _dirs(rng)
    files: list[tuple[str, str, int]] = []
    seen: set[str] = set()

    def name(ext_pool: list[str], i: int) -> str:
        while True:
            d = rng.choice(dirs)
            p = f"{d}/{rng.choice(_WORDS)}-{i:04d}{rng.choice(ext_pool)}".lstrip("/")
            if p not in seen:
                seen.add(p)
                return p

    i = 0
    for _ in range(spec.small):
        files.append((name(_TEXT_EXT, i), "text", rng.randint(200, 12_000)))
        i += 1
    for _ in range(spec.medium):
        files.append((name(_BIN_EXT, i), "bin", rng.randint(40_000, 240_000)))
        i += 1
    for _ in range(spec.large):
        files.append((name(_BIN_EXT, i), "bin", rng.randint(500_000, 2_000_000)))
        i += 1
    return files


def _write(path: Path, data: bytes, mtime: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def generate(root: str | os.PathLike, seed: int = 8, spec: type[TreeSpec] = TreeSpec) -> Path:
    """Write the tree for `seed` under `root` (replacing whatever is there)."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for rel, kind, size in _plan(seed, spec):
        frng = random.Random(f"{seed}:{rel}")
        data = _text(frng, size) if kind == "text" else frng.randbytes(size)
        _write(root / rel, data, BASE_MTIME)
    _fix_dir_mtimes(root)
    return root


class Mutation:
    """What `mutate` changed: relative paths edited, added and removed."""

    def __init__(self, edited: list[str], added: list[str], removed: list[str]) -> None:
        self.edited, self.added, self.removed = edited, added, removed

    @property
    def paths(self) -> list[str]:
        return [*self.edited, *self.added, *self.removed]


def mutate(src: str | os.PathLike, dst: str | os.PathLike, seed: int = 8, spec: type[TreeSpec] = TreeSpec) -> Mutation:
    """Copy `src` to `dst` and change 1% of it (deterministically for `seed`)."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=shutil.copy2)
    files = sorted(_plan(seed, spec), key=lambda t: t[0])
    rng = random.Random(seed * 7919 + 1)
    picked = rng.sample(files, TreeSpec.edits + TreeSpec.removes)
    edits, removes = picked[: TreeSpec.edits], picked[TreeSpec.edits :]
    for rel, kind, _size in edits:
        p = dst / rel
        data = bytearray(p.read_bytes())
        # change a few bytes in the middle and append some: a real edit, not just a touch
        for _ in range(8):
            k = rng.randrange(len(data))
            data[k] = (data[k] + 1 + rng.randrange(250)) % 256 if kind == "bin" else ord(rng.choice("abcdefgh"))
        data += b"\n// bench edit\n" if kind == "text" else rng.randbytes(64)
        _write(p, bytes(data), MUTATED_MTIME)
    for rel, _, _ in removes:
        (dst / rel).unlink()
    added = []
    for j in range(TreeSpec.adds):
        rel = f"{Path(edits[j][0]).parent}/added-{j}.txt".lstrip("./")
        _write(dst / rel, _text(random.Random(f"add:{seed}:{j}"), 3_000), MUTATED_MTIME)
        added.append(rel)
    _fix_dir_mtimes(dst)
    return Mutation([e[0] for e in edits], added, [r[0] for r in removes])


def _fix_dir_mtimes(root: Path) -> None:
    for d, _, _ in os.walk(root, topdown=False):
        os.utime(d, (BASE_MTIME, BASE_MTIME))


def _digest(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha1").hexdigest()


class DigestCache:
    """sha1 of files already hashed, keyed by path and valid while (inode, size, mtime, ctime)
    are unchanged. Any write, rename onto the path or chmod moves ctime, which no tool can set
    back, so a hit is the file that was hashed; at N = 200 this keeps a check after a no-change
    run from re-reading 10 GB."""

    _shared: DigestCache | None = None

    def __init__(self) -> None:
        self._known: dict[str, tuple[int, int, int, int, str]] = {}
        self.hits = 0

    @classmethod
    def shared(cls) -> DigestCache:
        """The one cache of this process."""
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def digest(self, path: str) -> str:
        st = os.stat(path)
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        known = self._known.get(path)
        if known is not None and known[:4] == key:
            self.hits += 1
            return known[4]
        dig = _digest(path)
        # stat again: a file changed while it was read is not remembered
        st2 = os.stat(path)
        if (st2.st_ino, st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns) == key:
            self._known[path] = (*key, dig)
        return dig


def manifest(root: str | os.PathLike, *, workers: int = 4, cache: DigestCache | None = None) -> dict[str, str]:
    """{relative path: sha1 of contents (or '<dir>' / '<link:target>')} of everything under `root`."""
    root = str(root)
    entries: dict[str, str] = {}
    files: list[str] = []
    for d, dirnames, filenames in os.walk(root):
        rel_d = os.path.relpath(d, root)
        for n in dirnames:
            p = os.path.join(d, n)
            rel = os.path.normpath(os.path.join(rel_d, n))
            entries[rel] = f"<link:{os.readlink(p)}>" if os.path.islink(p) else "<dir>"
        for n in filenames:
            p = os.path.join(d, n)
            rel = os.path.normpath(os.path.join(rel_d, n))
            if os.path.islink(p):
                entries[rel] = f"<link:{os.readlink(p)}>"
            else:
                files.append(rel)
    digest = cache.digest if cache is not None else _digest
    with ThreadPoolExecutor(max_workers=workers) as ex:
        for rel, dig in zip(files, ex.map(lambda r: digest(os.path.join(root, r)), files)):
            entries[rel] = dig
    return entries


def compare(
    expected: dict[str, str],
    root: str | os.PathLike,
    ignore: tuple[str, ...] = (),
    *,
    cache: DigestCache | None = None,
) -> str | None:
    """None when `root` holds exactly `expected`, else a short description of the first differences."""
    if not os.path.isdir(root):
        return f"{root} does not exist"
    got = manifest(root, cache=cache)
    for pfx in ignore:
        got = {k: v for k, v in got.items() if k != pfx and not k.startswith(pfx + "/")}
    if got == expected:
        return None
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    differ = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
    parts = []
    for label, items in (("missing", missing), ("unexpected", extra), ("different", differ)):
        if items:
            parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
    return "; ".join(parts)
