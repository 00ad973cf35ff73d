"""The atomic release layout on a target, as remote-side operations over a `Connection`.

    DEST/
      releases/<release-id>/      one complete tree per deploy (newest sorts last: ids are
                                  UTC timestamps like 20261124T051500Z)
      releases/.<id>.partial/     a release being built; never pointed at, removed on failure
      shared/<path>               state that outlives releases (uploads, config), symlinked
                                  into each release at <path>
      current -> releases/<id>    switched by a temporary symlink and rename(2), never rm + ln

Building a release: `prepare_release` seeds `.<id>.partial` from the current release with a
hard-link copy (`cp -al`), so only changed files have to move; the sync then replaces changed
files through temp + rename (never in place, which would write through the hard links into the
live release); `finish_release` links shared paths, renames the partial to `releases/<id>` and
switches `current`. Nothing before the switch touches `current` or the release it points to.

Used by the rsync module and reusable by rollback (`read_releases`, `switch_current`).

Over 400 lines as one idea: the host-side scripts of the release layout and the parsing of what they
answer belong together.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.connection.base import MAX_OUTPUT, CommandResult, Connection
from engine.errors import ModuleError
from modules._support.manifest import FIND_PRINTF, FIND_PRINTF_IDS, Entry, parse_find, parse_sha256sums

__all__ = [
    "RELEASE_INFO",
    "RemoteState",
    "probe_argv",
    "canonical_digest",
    "canonical_lines",
    "delta_probe",
    "apply_delta",
    "parse_probe",
    "read_releases",
    "release_name_for",
    "shared_link_target",
    "releases_to_remove",
    "prepare_release",
    "finish_release",
    "discard_release",
    "partial_dir",
    "remove_releases",
    "switch_current",
    "expected_listing",
    "parse_canonical",
]

#: Written into every release by the rsync module; not part of the compared tree.
RELEASE_INFO = ".playbook-release.json"

_PROBE = r"""
dest=$1 layout=$2 sums=$3 fmt=$4 expect=$5
canon() {  # the canonical listing (see canonical_lines): what rsync -a keeps, one NUL-ended line each
  # One find. %Ts is strftime's seconds since the epoch, the same in any zone; a fixed TZ spares
  # glibc a look at /etc/localtime for every file (half of the listing's CPU without it).
  TZ=UTC0 find . -mindepth 1 \( -type f -path ./.playbook-release.json \
    -o -type f -printf 'f %m %s %Ts %P\0' -o -type d -printf 'd %m %P\0' \
    -o -type l -printf 'l %P\001%l\0' -o -printf 'o %P\0' \)
}
t=$dest
if [ "$layout" = releases ]; then
  if [ -L "$dest/current" ]; then
    cur=$(readlink -- "$dest/current") || exit 1
    printf 'C\000%s\000' "$cur"
    case $cur in /*) t=$cur ;; *) t=$dest/$cur ;; esac
  elif [ -e "$dest/current" ]; then
    printf 'X\000E\000'; exit 0
  else
    t=
  fi
  if [ -d "$dest/releases" ]; then
    find "$dest/releases" -mindepth 1 -maxdepth 1 -type d -printf 'R\000%P\000' || exit 1
  fi
fi
rc=0
if [ -n "$t" ]; then
  if [ -d "$t" ] && [ "$expect" = "-" ]; then
    # stdin: the expected canonical listing; lines found once are on one side only
    printf 'D\000'
    { cat; cd -- "$t" && canon; } | LC_ALL=C sort -z | LC_ALL=C uniq -z -u || rc=1
  elif [ -d "$t" ]; then
    printf 'T\000'
    find "$t" -mindepth 1 -printf "$fmt" || rc=1
    if [ "$sums" = 1 ]; then
      printf 'S\000'
      (cd -- "$t" && find . -type f -print0 | xargs -0 -r sha256sum -z) || rc=1
    fi
  elif [ -e "$t" ]; then
    printf 'N\000'
  fi
fi
printf 'E\000'
exit $rc
"""

# `current` and the releases alone (the probe above without the tree): what rollback reads first
_LIVE = r"""
dest=$1
if [ -L "$dest/current" ]; then
  cur=$(readlink -- "$dest/current") || exit 1
  printf 'C\000%s\000' "$cur"
elif [ -e "$dest/current" ]; then
  printf 'X\000'
fi
if [ -d "$dest/releases" ]; then
  find "$dest/releases" -mindepth 1 -maxdepth 1 -type d -printf 'R\000%P\000' || exit 1
fi
printf 'E\000'
"""

_PREPARE = r"""
set -e
rels=$1 name=$2 seed=$3
mkdir -p -- "$rels"
cd -- "$rels"
for p in .*.partial; do
  if [ -e "$p" ]; then rm -rf -- "$p"; fi
done
part=".$name.partial"
if [ -n "$seed" ]; then
  cp -al -- "$seed" "$part" 2>/dev/null || { rm -rf -- "$part"; cp -a -- "$seed" "$part"; }
else
  mkdir -- "$part"
fi
"""

_FINISH = r"""
set -e
dest=$1 name=$2 token=$3 info=$4
shift 4
part="$dest/releases/.$name.partial"
rel="$dest/releases/$name"
while [ $# -gt 1 ]; do
  p=$1 link=$2
  shift 2
  if [ ! -e "$dest/shared/$p" ] && [ ! -L "$dest/shared/$p" ]; then mkdir -p -- "$dest/shared/$p"; fi
  rm -rf -- "$part/$p"
  mkdir -p -- "$(dirname -- "$part/$p")"
  ln -s -- "$link" "$part/$p"
done
if [ "$info" = 1 ]; then
  cat > "$part/.playbook-release.json.tmp"
  chmod 644 "$part/.playbook-release.json.tmp"
  mv -f -- "$part/.playbook-release.json.tmp" "$part/.playbook-release.json"
fi
mv -T -- "$part" "$rel"
tmp="$dest/.current-$token"
if ln -s -- "releases/$name" "$tmp" && mv -T -- "$tmp" "$dest/current"; then
  exit 0
fi
rm -f -- "$tmp"
rm -rf -- "$rel"
exit 1
"""

_SWITCH = r"""
dest=$1 name=$2 token=$3
[ -d "$dest/releases/$name" ] || { echo "release '$name' does not exist" >&2; exit 3; }
tmp="$dest/.current-$token"
ln -s -- "releases/$name" "$tmp" || exit 1
mv -T -- "$tmp" "$dest/current" || { rm -f -- "$tmp"; exit 1; }
"""


@dataclass(frozen=True)
class RemoteState:
    """What one probe saw under a destination.

    `tree` is the compared tree (the directory itself for a plain layout, the release `current`
    points to with releases), or None when it does not exist. `current_target` is the raw link
    text; `current_release` the release name when it points into `releases/`. `current_blocked`
    is True when `current` exists but is not a symlink (a plain directory: not ours to replace).
    """

    dest: str
    layout: str  # "plain" | "releases"
    tree: dict[str, Entry] | None = None
    tree_path: str = ""
    tree_not_dir: bool = False
    current_target: str | None = None
    current_release: str | None = None
    current_blocked: bool = False
    releases: tuple[str, ...] = ()
    partials: tuple[str, ...] = ()
    raw_digest: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


def probe_argv(dest: str, *, releases: bool, checksum: bool, expect: str = "", owners: bool = False) -> list[str]:
    """The one read-only command that describes `dest` (see `parse_probe`).

    With `expect="-"` the expected canonical listing comes on stdin and the host answers with a
    `D` section of the lines found on one side only instead of its whole listing (`delta_probe`).
    `owners`: each entry's owner with the user and group names, not only the ids."""
    return [
        "sh",
        "-c",
        _PROBE,
        "sh",
        dest,
        "releases" if releases else "plain",
        "1" if checksum else "0",
        FIND_PRINTF if owners else FIND_PRINTF_IDS,
        expect,
    ]


def canonical_lines(tree: Mapping[str, Entry]) -> dict[bytes, str]:
    """The tree's canonical listing as the probe's `canon` prints it on the host, line -> path:
    `f MODE SIZE MTIME PATH`, `d MODE PATH`, `l PATH\\x01TARGET`, `o PATH` (NUL-ended)."""
    lines = {}
    for rel, e in tree.items():
        if e.kind == "f":
            line = f"f {e.mode:o} {e.size} {e.mtime} {rel}"
        elif e.kind == "d":
            line = f"d {e.mode:o} {rel}"
        elif e.kind == "l":
            line = f"l {rel}\x01{e.target}"
        else:
            line = f"o {rel}"
        lines[line.encode("utf-8", "surrogateescape") + b"\0"] = rel
    return lines


def expected_listing(tree: Mapping[str, Entry]) -> tuple[dict[bytes, str], bytes]:
    """(line -> path, the sorted listing as sent on stdin): compute once, send to every host."""
    lines = canonical_lines(tree)
    return lines, b"".join(sorted(lines))


def canonical_digest(tree: Mapping[str, Entry]) -> str:
    """sha256 of the sorted canonical listing: what the host's probe compares against."""
    return hashlib.sha256(b"".join(sorted(canonical_lines(tree)))).hexdigest()


def parse_canonical(line: bytes) -> tuple[str, Entry]:
    """One canonical line (without its NUL) back into (path, Entry)."""
    text = line.decode("utf-8", "surrogateescape")
    kind = text[:1]
    if kind == "f":
        _, mode, size, mtime, rel = text.split(" ", 4)
        return rel, Entry("f", int(mode, 8), int(size), int(mtime))
    if kind == "d":
        _, mode, rel = text.split(" ", 2)
        return rel, Entry("d", int(mode, 8))
    if kind == "l":
        rel, _, target = text[2:].partition("\x01")
        return rel, Entry("l", 0o777, target=target)
    return text[2:], Entry("o", 0)


def apply_delta(expected: Mapping[str, Entry], lines: Mapping[bytes, str], delta: Sequence[bytes]) -> dict[str, Entry]:
    """The host's tree from the expected tree and the canonical lines found on one side only."""
    tree = dict(expected)
    for line in delta:
        full = line + b"\0"
        if full in lines:  # expected, but not on the host (or not like that)
            rel = lines[full]
            if tree.get(rel) is expected.get(rel):
                tree.pop(rel, None)
        else:  # on the host, not as expected
            rel, entry = parse_canonical(line)
            tree[rel] = entry
    return dict(sorted(tree.items()))


def delta_probe(
    conn: Any,
    dest: str,
    expected: Mapping[str, Entry],
    *,
    releases: bool = False,
    timeout: float | None = None,
    listing: tuple[Mapping[bytes, str], bytes] | None = None,
) -> tuple[RemoteState, dict[str, Entry] | None]:
    """Probe `dest` sending the expected canonical listing on stdin: the host answers with the
    lines found on one side only (`sort | uniq -u`; nothing is written there), so an in-sync host
    answers with nothing and a 1% change costs 1% of a listing. Returns the state and the host's
    tree (None when there is no tree)."""
    lines, payload = listing if listing is not None else expected_listing(expected)
    runner = getattr(conn, "probe", None) or conn.run
    res = runner(probe_argv(dest, releases=releases, checksum=False, expect="-"), stdin=payload, timeout=timeout)
    state = parse_probe(dest, res, releases=releases, host=getattr(conn, "host", ""))
    delta = state.extra.get("delta")
    if delta is None:
        return state, None
    return state, apply_delta(expected, lines, delta)


def _release_of(dest: str, target: str) -> str | None:
    full = target if target.startswith("/") else posixpath.join(dest, target)
    full = posixpath.normpath(full)
    parent, name = posixpath.split(full)
    if parent == posixpath.normpath(posixpath.join(dest, "releases")) and name and not name.startswith("."):
        return name
    return None


def parse_probe(dest: str, result: CommandResult, *, releases: bool, host: str = "") -> RemoteState:
    """Turn the probe's output into a `RemoteState`; a failed probe raises `ModuleError`."""
    if result.rc != 0:
        tail = result.err.strip()[-500:] or f"exit status {result.rc}"
        raise ModuleError(f"cannot read the tree under {dest}: {tail}", path=host)
    if result.dropped:  # a listing cut at MAX_OUTPUT would read as missing files
        raise ModuleError(f"cannot read the tree under {dest}: its listing is over {MAX_OUTPUT} bytes", path=host)
    tokens = result.stdout.split(b"\0")
    i = 0
    current: str | None = None
    blocked = False
    rels: list[str] = []
    partials: list[str] = []
    tree_records: list[bytes] | None = None
    sums: dict[str, str] = {}
    not_dir = False
    delta: list[bytes] | None = None
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok == b"C":
            current = tokens[i].decode("utf-8", "surrogateescape")
            i += 1
        elif tok == b"X":
            blocked = True
        elif tok == b"R":
            name = tokens[i].decode("utf-8", "surrogateescape")
            i += 1
            if name.startswith(".") and name.endswith(".partial"):
                partials.append(name)
            elif not name.startswith("."):
                rels.append(name)
        elif tok == b"N":
            not_dir = True
        elif tok == b"D":
            start = i
            while i < len(tokens) and tokens[i] != b"E":
                i += 1
            delta = [t for t in tokens[start:i] if t]
            continue

        elif tok == b"T":
            tree_records = []
            while i + 1 < len(tokens) and b"/" in tokens[i]:
                tree_records += [tokens[i], tokens[i + 1]]
                i += 2
        elif tok == b"S":
            start = i
            while i < len(tokens) and tokens[i] != b"E":
                i += 1
            sums = parse_sha256sums(tokens[start:i])
        elif tok == b"E":
            break
    tree: dict[str, Entry] | None = None
    if tree_records is not None:
        tree = parse_find(tree_records)
        if sums:
            tree = {
                rel: (
                    Entry(e.kind, e.mode, e.size, e.mtime, sums.get(rel, ""), e.target, e.owner) if e.kind == "f" else e
                )
                for rel, e in tree.items()
            }
    tree_path = dest
    cur_release = None
    if releases:
        tree_path = ""
        if current is not None:
            tree_path = current if current.startswith("/") else posixpath.join(dest, current)
            cur_release = _release_of(dest, current)
    return RemoteState(
        dest=dest,
        layout="releases" if releases else "plain",
        tree=tree,
        tree_path=tree_path,
        tree_not_dir=not_dir,
        current_target=current,
        current_release=cur_release,
        current_blocked=blocked,
        releases=tuple(sorted(rels)),
        partials=tuple(sorted(partials)),
        raw_digest="sha256:" + hashlib.sha256(result.stdout).hexdigest(),
        extra={"delta": delta} if delta is not None else {},
    )


def read_releases(conn: Any, dest: str, *, timeout: float | None = None) -> RemoteState:
    """Where `current` points under `dest` and which releases are there, without reading any
    tree (`tree` is None): one cheap probe over `conn` (a `Connection` or a read-only view)."""
    runner = getattr(conn, "probe", None) or conn.run
    result = runner(["sh", "-c", _LIVE, "sh", dest], timeout=timeout)
    return parse_probe(dest, result, releases=True, host=getattr(conn, "host", ""))


def release_name_for(release_id: str, existing: Iterable[str], current: str | None = None) -> str:
    """The directory name for a new release: the run's release id, or `<id>-2`, `<id>-3`...
    when that name is already taken (a re-run with the same id never rebuilds a live release)."""
    taken = set(existing)
    if current:
        taken.add(current)
    if release_id not in taken:
        return release_id
    n = 2
    while f"{release_id}-{n}" in taken:
        n += 1
    return f"{release_id}-{n}"


def shared_link_target(dest: str, release: str, path: str) -> str:
    """The relative symlink text placed at `releases/<release>/<path>` for shared `path`."""
    link_dir = posixpath.dirname(posixpath.join(dest, "releases", release, path))
    return posixpath.relpath(posixpath.join(dest, "shared", path), link_dir)


def releases_to_remove(releases: Sequence[str], keep: int, protect: Iterable[str | None]) -> list[str]:
    """Which releases a `keep` cleanup removes: all but the `keep` newest (by name), never one
    in `protect` (the new `current` and the previous good release)."""
    ordered = sorted(releases)
    protected = {p for p in protect if p}
    keep_set = set(ordered[-keep:]) if keep > 0 else set()
    return [r for r in ordered if r not in keep_set and r not in protected]


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or name.startswith(".") or "\0" in name:
        raise ModuleError(f"release name must be a plain directory name (got {name!r})")


def _run(conn: Connection, argv: list[str], what: str, timeout: float | None) -> CommandResult:
    res = conn.run(argv, timeout=timeout)
    if res.rc != 0:
        tail = res.err.strip()[-800:] or f"exit status {res.rc}"
        raise ModuleError(f"{what}: {tail}", path=conn.host)
    return res


def partial_dir(dest: str, name: str) -> str:
    return posixpath.join(dest, "releases", f".{name}.partial")


def prepare_release(conn: Connection, dest: str, name: str, seed: str | None, *, timeout: float | None = None) -> str:
    """Create `releases/.<name>.partial`, a hard-link copy of `seed` (a directory path) or empty;
    stale partial builds of earlier failed runs are removed first. Returns the partial path."""
    _check_name(name)
    _run(
        conn,
        ["sh", "-c", _PREPARE, "sh", posixpath.join(dest, "releases"), name, seed or ""],
        f"cannot prepare release {name}",
        timeout,
    )
    return partial_dir(dest, name)


def finish_release(
    conn: Connection,
    dest: str,
    name: str,
    shared: Sequence[str] = (),
    *,
    info: Mapping[str, Any] | None = None,
    timeout: float | None = None,
) -> None:
    """Link `shared` paths into the partial release, write `info` as `RELEASE_INFO` (temp +
    rename, never through a hard link), rename the partial to `releases/<name>` and switch
    `current` to it (temp symlink + rename), all in one command. On failure `current` is
    untouched and the new release is removed."""
    _check_name(name)
    args: list[str] = []
    for p in shared:
        args += [p, shared_link_target(dest, name, p)]
    data = (json.dumps(dict(info), sort_keys=True, indent=2) + "\n").encode() if info is not None else None
    res = conn.run(
        ["sh", "-c", _FINISH, "sh", dest, name, secrets.token_hex(6), "1" if data else "0", *args],
        stdin=data,
        timeout=timeout,
    )
    if res.rc != 0:
        tail = res.err.strip()[-800:] or f"exit status {res.rc}"
        raise ModuleError(f"cannot switch 'current' to release {name}: {tail}", path=conn.host)


def switch_current(conn: Connection, dest: str, name: str, *, timeout: float | None = None) -> None:
    """Point `current` at an existing `releases/<name>` atomically (for rollback)."""
    _check_name(name)
    _run(
        conn,
        ["sh", "-c", _SWITCH, "sh", dest, name, secrets.token_hex(6)],
        f"cannot switch 'current' to release {name}",
        timeout,
    )


def discard_release(conn: Connection, dest: str, name: str) -> bool:
    """Best effort after a failure: remove the partial build. Never raises; True if removed."""
    try:
        res = conn.run(["rm", "-rf", "--", partial_dir(dest, name)], timeout=60)
        return res.rc == 0
    except Exception:  # the host may be gone: the next run removes stale partials anyway
        return False


def remove_releases(conn: Connection, dest: str, names: Sequence[str], *, timeout: float | None = None) -> None:
    """Remove `releases/<name>` for each name (the caller decided they are not protected)."""
    if not names:
        return
    for n in names:
        _check_name(n)
    _run(
        conn,
        ["sh", "-c", 'cd -- "$1" && shift && rm -rf -- "$@"', "sh", posixpath.join(dest, "releases"), *names],
        "cannot remove old releases",
        timeout,
    )
