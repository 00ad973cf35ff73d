"""A small change sent as one rsync batch, written once for every host whose plan names the same
paths (issue 16: "compute the delta once").

A relayed rsync (modules/_support/rsync_transfer.py) costs the controller, for every host, an
rsync process that lists and reads the files, a shell and two `cat`s for its remote shell, and
the threads that copy between them. Hosts whose plans name the same paths need the same bytes,
so here the controller's rsync runs once per set of paths: `rsync --only-write-batch` against a
destination that does not exist records whole files, with the file list and the checksums that
the receiving rsync verifies. Each host then gets the batch on the stdin of one command over the
engine's open connection: the shell deletes the planned deletions and starts the host's own
rsync with `--read-batch=-`. That is rsync's receiver as in any transfer, with the same options:
each file goes to a temp name and is renamed into place (a live tree never shows a half-written
file; with `-I` a hard-linked older release is never written through).

Only transfers under `BATCH_MAX_BYTES` are batched: whole files where a normal rsync might send
deltas, and small enough to show no progress. A batch is held in memory for the run, the last
few only.

The batch names every parent directory of the planned paths: a reading rsync creates no implied
directory (rsync 3.2.7 and 3.5.0 fail with "mkdir ... No such file or directory"), and a listed
parent gets the source's mode and mtime, as an implied one does in a normal transfer. It is
written with protocol 31, which every rsync since 3.1.0 reads (Debian 12 has 3.2.7 and 3.5.0,
both protocol 32).

The host's rsync verifies each file's checksum, but reading a batch it drops a file that fails
it and may still exit 0, so the same command then reports the size and mtime of every file the
batch carried, and the engine compares them with the source's. When a host did not apply the
batch exactly (no rsync there, an older one, any failure or warning, a file that differs), the
caller sends the plan with a normal rsync, which rewrites every listed path anyway (`-I`):
trying first loses nothing but the time of the attempt.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shlex
import subprocess
import tempfile
import threading
from collections.abc import Mapping

from engine.connection import children
from engine.module import ApplyContext
from modules._support.memo import Memo
from modules._support.transfer_progress import RSYNC_PROGRESS_MIN_BYTES

__all__ = ["BATCH_MAX_BYTES", "IDLE_SECONDS", "send_batch", "batch_paths"]

#: Transfers of fewer bytes of file data than this go as one batch for every host (see above).
BATCH_MAX_BYTES = RSYNC_PROGRESS_MIN_BYTES

#: The host's rsync gives up after this long without I/O (`--timeout`). rsync 3.5.0 reading a
#: batch whose data fails its checksum may otherwise wait for a resend that a batch never has.
IDLE_SECONDS = 30
_PROTOCOL = 31
_MAX_COMMAND = 32 * 1024  # the host command with its deletions; a longer one takes a normal rsync
_batches = Memo(size=4)
# per run id, the hosts whose rsync could not read a batch: a normal rsync for the rest of the run
_refused = Memo(size=4)
_refused_lock = threading.Lock()


def batch_paths(paths: list[str]) -> list[str]:
    """`paths` with every parent directory they lack, parents first."""
    listed = set(paths)
    for p in paths:
        parent = posixpath.dirname(p)
        while parent and parent not in listed:
            listed.add(parent)
            parent = posixpath.dirname(parent)
    return sorted(listed)


def send_batch(
    ctx: ApplyContext,
    src: str,
    root: str,
    paths: list[str],
    deletions: list[str],
    options: list[str],
    files: Mapping[str, tuple[int, int]],
) -> bool:
    """Send `paths` of `src` to `root` on the host as a batch and remove `deletions` (relative
    to `root`, already checked to be inside it) first. `files` are the regular files among
    `paths` with their sizes and mtimes: once the host's rsync is done, the same command
    reports them (`stat`), and the batch counts as applied only if every one matches and rsync
    said nothing. False when it was not sent or not applied: the caller sends with a normal
    rsync."""
    nbytes = sum(size for size, _ in files.values())
    refused: set[str] = _refused.get(ctx.run_id, set)
    if not paths or nbytes >= BATCH_MAX_BYTES or ctx.conn is None or (ctx.host or "") in refused:
        return False
    checked = sorted(files)
    removal = f"rm -rf -- {' '.join(shlex.quote(p) for p in deletions)} && " if deletions else ""
    reader = f"rsync --read-batch=- --timeout={IDLE_SECONDS} {' '.join(shlex.quote(o) for o in options)} ./"
    report = " && exec stat -c '%s %Y' -- \"$@\"" if checked else ""
    # `[` is the shell's own: no `mkdir` process where the tree exists (nearly always)
    script = f'{{ [ -d "$1" ] || mkdir -p -- "$1"; }} && cd -- "$1" && shift && {removal}{reader}{report}'
    argv = ["sh", "-c", script, "playbook-batch", root, *checked]
    if sum(len(a) + 3 for a in argv) > _MAX_COMMAND:
        return False
    listed = batch_paths(paths)
    key = (
        ctx.run_id,
        src,
        tuple(options),
        hashlib.sha256("\0".join(listed).encode("utf-8", "surrogateescape")).digest(),
    )
    batch = _batches.get(key, lambda: _write_batch(src, listed, options, ctx.remaining()))
    if batch is None:
        return False
    res = ctx.conn.run(argv, stdin=batch, timeout=ctx.remaining())
    children.check_abort()
    said = res.err.strip()
    expected = "".join(f"{files[p][0]} {files[p][1]}\n" for p in checked)
    if res.rc == 0 and not said and res.out == expected:
        return True
    # rsync reading a batch drops a file that fails its checksum and may still exit 0, with or
    # without a warning (3.5.0): what the host has is what counts
    why = said.splitlines()[-1:] or [f"exit {res.rc}" if res.rc else "the files differ from the source"]
    ctx.emit(f"rsync: the host did not apply the batch ({why[0][:300]}); sending with rsync")
    if res.rc in (1, 2, 127):  # usage (an option it lacks), protocol, no rsync: it will not change
        with _refused_lock:
            refused.add(ctx.host or "")
    return False


def _write_batch(src: str, listed: list[str], options: list[str], timeout: float | None) -> bytes | None:
    """The batch of `listed` paths of `src`, or None when the controller's rsync would not
    write it (the normal transfer then reports what is wrong)."""
    with tempfile.TemporaryDirectory(prefix="playbook-batch-") as tmp:
        batch = os.path.join(tmp, "batch")
        argv = [
            "rsync",
            *options,
            "--from0",
            "--files-from=-",
            f"--protocol={_PROTOCOL}",
            f"--only-write-batch={batch}",
            src.rstrip("/") + "/",
            os.path.join(tmp, "none") + "/",  # never created: every file is recorded whole
        ]
        stdin = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in listed)
        try:
            done = children.run(argv, input=stdin, timeout=timeout)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0:
            return None
        with open(batch, "rb") as f:
            return f.read()
