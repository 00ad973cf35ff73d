"""The recorded tree of a deploy: the canonical listing of what an rsync step put on its hosts.

Every plan of an `rsync` step writes the listing of the tree a host has once the source is
synced (names, kinds, modes, sizes, whole-second mtimes, link targets: what `rsync -a` keeps) to
`<state_dir>/trees/<digest>.listing`, named by its sha256, once per distinct tree. The step's
`tree_digest` output names it, so the history says which tree each host got, and `playbook
drift` compares a host's live tree with it (modules/tree_state.py) with the same one-probe
delta the no-change plan uses. A listing is verified against its name before use.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading

from modules._support.manifest import Entry
from modules._support.releases import parse_canonical

__all__ = ["listing_path", "save_listing", "load_listing"]

_DIGEST = re.compile(r"[0-9a-f]{64}\Z")


def listing_path(state_dir: str, digest: str) -> str:
    """`<state_dir>/trees/<digest>.listing`."""
    return os.path.join(state_dir, "trees", f"{digest}.listing")


def save_listing(state_dir: str | None, digest: str, payload: bytes) -> None:
    """Write `payload` (a sorted canonical listing whose sha256 is `digest`) unless it is there;
    atomically (temp + rename). A read-only state dir only loses the record."""
    if not state_dir or not _DIGEST.match(digest):
        return
    path = listing_path(state_dir, digest)
    if os.path.exists(path):
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except OSError:
        pass


_loaded: dict[tuple[str, str], tuple[dict[str, Entry], dict[bytes, str], bytes]] = {}
_loaded_lock = threading.Lock()


def load_listing(state_dir: str, digest: str) -> tuple[dict[str, Entry], dict[bytes, str], bytes] | None:
    """The recorded tree named `digest`: (tree, canonical line -> path, the listing as sent to a
    host). None when it is missing or its content does not hash to its name (altered). Read
    and verified once per process however many hosts ask (the last few are kept)."""
    if not _DIGEST.match(digest):
        return None
    key = (os.path.abspath(state_dir), digest)
    with _loaded_lock:
        hit = _loaded.get(key)
        if hit is None:
            hit = _read(state_dir, digest)
            if hit is not None:
                _loaded[key] = hit
                while len(_loaded) > 8:
                    _loaded.pop(next(iter(_loaded)))
        return hit


def _read(state_dir: str, digest: str) -> tuple[dict[str, Entry], dict[bytes, str], bytes] | None:
    try:
        with open(listing_path(state_dir, digest), "rb") as fh:
            payload = fh.read()
    except OSError:
        return None
    if hashlib.sha256(payload).hexdigest() != digest:
        return None
    tree: dict[str, Entry] = {}
    lines: dict[bytes, str] = {}
    for line in payload.split(b"\0"):
        if not line:
            continue
        rel, entry = parse_canonical(line)
        tree[rel] = entry
        lines[line + b"\0"] = rel
    return dict(sorted(tree.items())), lines, payload
