"""Bytes done of a long transfer, told to the step's `ctx.progress` (engine/execute/progress.py
rate-limits what it is told into `Progress` events).

`metered` counts the chunks of a download (S3, npm) as they pass into the artifact cache.
`RsyncProgress` asks rsync for `--info=progress2` and reads its stdout on a thread: rsync
rewrites one line (`\\r`-separated) with the bytes sent so far. Only transfers of at least
`RSYNC_PROGRESS_MIN_BYTES` ask: a small one is over before a second, and a host in sync starts
no rsync at all.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator

__all__ = ["metered", "RsyncProgress", "RSYNC_PROGRESS_MIN_BYTES", "parse_progress2"]

RSYNC_PROGRESS_MIN_BYTES = 1 << 20

_PROGRESS2 = re.compile(rb"\s*([\d,.']+)\s+\d+%")


def metered(
    chunks: Iterable[bytes], progress: Callable[..., None], total: int | None, what: str = "download"
) -> Iterator[bytes]:
    """`chunks`, passed on unchanged, telling `progress(done, total, what)` after each."""
    done = 0
    for chunk in chunks:
        done += len(chunk)
        progress(done, total, what)
        yield chunk


def parse_progress2(record: bytes) -> int | None:
    """The bytes done of one `--info=progress2` record (`  1,234,567  12%  1.23MB/s  0:00:08`),
    or None when the record is not one (digit grouping by locale: `,`, `.` or `'`)."""
    m = _PROGRESS2.match(record)
    if m is None:
        return None
    digits = re.sub(rb"[^\d]", b"", m.group(1))
    return int(digits) if digits else None


class RsyncProgress:
    """rsync's progress output for one transfer of `total` bytes, or nothing when it is small.

    `argv(argv)` adds `--info=progress2`; `stdout` is what to give `Popen` (a pipe of ours);
    `started()` after `Popen` starts the reader; `finish()` waits for it (rsync's end closes
    the pipe)."""

    def __init__(self, progress: Callable[..., None], total: int) -> None:
        self.enabled = total >= RSYNC_PROGRESS_MIN_BYTES
        self._progress = progress
        self._total = total
        self._fds: tuple[int, int] | None = os.pipe() if self.enabled else None
        self._thread: threading.Thread | None = None

    def argv(self, argv: list[str]) -> list[str]:
        return [argv[0], "--info=progress2", *argv[1:]] if self.enabled else argv

    @property
    def stdout(self) -> int:
        return self._fds[1] if self._fds else subprocess.PIPE

    def started(self) -> None:
        if self._fds is None:
            return
        os.close(self._fds[1])
        self._thread = threading.Thread(target=self._read, args=(self._fds[0],), name="rsync-progress", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        """Wait for the reader; close our ends if rsync never started."""
        if self._fds is None:
            return
        if self._thread is None:
            for fd in self._fds:
                os.close(fd)
        else:
            self._thread.join(5.0)  # a grandchild holding the pipe must not hold the deploy
        self._fds = None

    def _read(self, fd: int) -> None:
        tail = b""
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    return
                *records, tail = re.split(rb"[\r\n]", tail + data)
                for rec in reversed(records):  # only the newest counts
                    done = parse_progress2(rec)
                    if done is not None:
                        self._progress(done, self._total, "transfer")
                        break
        finally:
            os.close(fd)
