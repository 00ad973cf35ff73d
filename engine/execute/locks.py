"""Deploy locks on targets: one deploy at a time per fleet.

A lock is a directory on each target host, created with `mkdir` (atomic: exactly one of two
racing runs succeeds; there is no check-then-write window), with `info.json` inside naming the
holder. The default path is `/tmp/playbook-locks/<fleet>.lock` (`default_lock_path`): it does
not depend on any step's `dest`, so every playbook that deploys to a fleet of that name on those
hosts shares it. `/tmp/playbook-locks` is created mode 1777 (sticky, like /tmp) so different
deploy users can each hold locks there; a reboot or tmp cleaner forgets stale locks.

    info = LockInfo.create(run_id=..., playbook=...)
    acquire(conn, path, info)            # or LockHeld naming the holder and its age
    ...
    release(conn, path, info.run_id)     # only removes our own lock
    status(conn, path)                   # LockInfo | None
    break_lock(conn, path)               # removes whoever holds it (explicit operator action)

`acquire_all`/`release_all` do the same over many hosts in parallel, releasing what they took
if any host is held by another run.

The parts of one run (its shards; hosts that share one lock directory) share its lock: each
part is a directory in `<lock>/parts`, `acquire(..., part=...)` joins a lock its run holds and
`release` removes the lock only when the last part leaves.
"""

from __future__ import annotations

import getpass
import json
import os
import posixpath
import re
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from engine.connection.base import Connection
from engine.errors import ArgError, ConnectionFailed, LockHeld, ModuleError
from engine.model import jsonable

__all__ = [
    "LOCK_ROOT",
    "LockInfo",
    "default_lock_path",
    "acquire",
    "release",
    "break_lock",
    "status",
    "acquire_all",
    "release_all",
    "format_age",
    "holder_alive",
]

LOCK_ROOT = "/tmp/playbook-locks"
INFO_FILE = "info.json"

# $1 lock path, $2 the run id as written in info.json ("run_id": "<id>"), $3 this part's name.
# A part of the run is a directory in $1/parts; the lock goes when the last part leaves.
# exit 0 taken or joined, 3 held by another run (or not yet showing whose), 4 changing hands
# (released between our mkdir and our look, or this run's lock on its way out): try again
_ACQUIRE = r"""
root=$(dirname -- "$1")
if [ ! -d "$root" ]; then
  mkdir -p -- "$(dirname -- "$root")" && mkdir -m 1777 -- "$root" 2>/dev/null
  [ -d "$root" ] || { echo "cannot create $root" >&2; exit 1; }
fi
if err=$(mkdir -m 0755 -- "$1" 2>&1); then
  mkdir -- "$1/parts" "$1/parts/$3" && cat > "$1/.info.tmp" && chmod 0644 "$1/.info.tmp" &&
    mv -f -- "$1/.info.tmp" "$1/info.json" && exit 0
  rm -rf -- "$1"; exit 1
fi
# gone again since our mkdir failed: released meanwhile, try again; else mkdir's own error
[ -e "$1" ] || { [ -w "$root" ] && exit 4; echo "$err" >&2; exit 1; }
id=$2 lock=$1
ours() { grep -qF -- "\"run_id\": $id" "$lock/info.json" 2>/dev/null; }
ours || exit 3
new=0; mkdir -- "$1/parts/$3" 2>/dev/null && new=1
# joined only if the parts were still there and the lock is still this run's
[ -d "$1/parts/$3" ] && ours && exit 0
[ $new = 1 ] && rmdir -- "$1/parts/$3" 2>/dev/null
exit 4
"""
# a lock released between the test and the stat (renamed away by its holder) is free
_STAT = (
    r"""[ -d "$1" ] || exit 3; stat -c %Y -- "$1" 2>/dev/null || exit 3; cat -- "$1/info.json" 2>/dev/null; exit 0"""
)
_HELD = 3
_CHANGING = 4
# $1 lock path, $2 the run id as in info.json, $3 this part's name: exit 3 when free or held by
# another run, 5 when other parts of the run still hold it (this part left), 0 when removed.
# The last part out removes `parts` with rmdir (fails while any part is in it), so no part
# can join a lock on its way out
_RELEASE = r"""
[ -f "$1/info.json" ] || exit 3
grep -qF -- "\"run_id\": $2" "$1/info.json" || exit 3
rmdir -- "$1/parts/$3" 2>/dev/null
if ! rmdir -- "$1/parts" 2>/dev/null; then
  [ -d "$1/parts" ] && exit 5
  exit 3
fi
t="$1.released-$$"; mv -T -- "$1" "$t" 2>/dev/null || exit 3; rm -rf -- "$t"
"""
_LEFT = 5
_FRESH_RETRIES = 20


@dataclass(frozen=True)
class LockInfo:
    """Who holds a lock: user, run id, playbook, controller pid and host, and since when
    (seconds since the epoch, controller clock)."""

    owner: str
    run_id: str
    playbook: str
    pid: int
    time: float
    host: str

    @classmethod
    def create(cls, *, run_id: str, playbook: str, owner: str | None = None) -> LockInfo:
        """Info for this process: the current user, pid and hostname, now."""
        try:
            user = owner or getpass.getuser()
        except Exception:  # no passwd entry (containers): still record something useful
            user = owner or str(os.getuid())
        return cls(user, run_id, playbook, os.getpid(), time.time(), socket.gethostname())

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes | None, *, fallback_time: float = 0.0) -> LockInfo:
        """Parse `info.json`; a missing or damaged file gives an `unknown` holder."""
        try:
            raw = jsonable.loads(data or b"")
            if not isinstance(raw, dict):
                raise ValueError
            return cls(
                str(raw.get("owner", "unknown")),
                str(raw.get("run_id", "")),
                str(raw.get("playbook", "")),
                int(raw.get("pid", 0) or 0),
                float(raw.get("time", fallback_time) or fallback_time),
                str(raw.get("host", "")),
            )
        except (ValueError, TypeError):
            return cls("unknown", "", "", 0, fallback_time, "")

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.time)

    def describe(self, now: float | None = None) -> str:
        """`alice (run 3f2a…, playbook deploy.yml, pid 42 on deploy1) for 3m12s`."""
        where = f"pid {self.pid} on {self.host}" if self.host else f"pid {self.pid}"
        run = self.run_id or "unknown"
        pb = self.playbook or "unknown"
        return f"{self.owner} (run {run}, playbook {pb}, {where}) for {format_age(self.age(now))}"


def holder_alive(info: LockInfo) -> bool | None:
    """Whether the holder's process still runs: True/False when it ran on this controller
    (`info.host` is this machine's hostname), None when it ran on another one (not visible
    from here)."""
    if not info.host or info.host != socket.gethostname():
        return None
    if info.pid <= 0:
        return False
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _liveness(info: LockInfo) -> str:
    """What a refusal says about the holder's process, and what to do."""
    alive = holder_alive(info)
    if alive is None:
        where = f"on {info.host}" if info.host else "on an unrecorded controller"
        return (
            f"its pid {info.pid} runs {where}, another controller, so whether it still runs cannot be seen from "
            "here; wait for it to finish, or break the lock with 'playbook lock release --force'"
        )
    if alive:
        return f"its pid {info.pid} is still running on {info.host}: wait for it to finish"
    return (
        f"its pid {info.pid} is no longer running on {info.host} (killed?): a stale lock; break it with "
        "'playbook lock release'"
    )


def format_age(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def default_lock_path(fleet: str) -> str:
    """`/tmp/playbook-locks/<fleet>.lock` (unsafe characters of the name replaced by `_`).

    `$PLAYBOOK_LOCK_DIR` on the controller replaces `/tmp/playbook-locks` (an absolute path on
    the targets), e.g. to keep separate test fleets that share one machine apart."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", fleet).lstrip(".") or "fleet"
    return posixpath.join(os.environ.get("PLAYBOOK_LOCK_DIR") or LOCK_ROOT, f"{safe}.lock")


def _check_path(path: str) -> str:
    norm = posixpath.normpath(path)
    if not path.startswith("/") or norm == "/" or ".." in path.split("/") or posixpath.dirname(norm) == "/":
        raise ArgError(f"lock path must be an absolute path at least two levels deep (got {path!r})")
    return norm


def acquire(conn: Connection, path: str, info: LockInfo, *, part: str = "", timeout: float | None = 30) -> None:
    """Take the lock at `path` on `conn`'s host, or raise `LockHeld` naming the holder.

    `part` names this process's share of the run (a shard's own run id; the run id when empty).
    A lock this run already holds is joined: hosts that share one lock directory, the shards of
    one run. It is removed when its last part releases it.

    `mkdir` is the atomic test-and-set; `info.json` is written after it (temp + rename). A
    holder seen between those two moments shows as `unknown`, aged from the directory's mtime.
    """
    path = _check_path(path)
    argv = ["sh", "-c", _ACQUIRE, "sh", path, json.dumps(info.run_id), _part_name(part or info.run_id)]
    holder: LockInfo | None = None
    for _ in range(_FRESH_RETRIES):
        res = conn.run(argv, stdin=info.to_json(), timeout=timeout)
        if res.rc == 0:
            return
        if res.rc == _CHANGING:  # released a moment ago, or this run's on its way out
            time.sleep(0.05)
            continue
        if res.rc != _HELD:
            raise ModuleError(
                f"cannot create deploy lock {path}: {res.err.strip()[-300:] or f'exit {res.rc}'}", path=conn.host
            )
        holder = status(conn, path, timeout=timeout)
        if holder is None or holder.run_id == info.run_id:
            continue  # released since our mkdir, or this run's and only now showing it: again
        break
    if holder is None:
        advice = "wait for it to finish, or break a stale lock with 'playbook lock release --force'"
    else:
        advice = _liveness(holder)
    raise LockHeld(
        f"deploy lock {path} is held by {holder.describe() if holder else 'another run'}; {advice}", path=conn.host
    )


def _part_name(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", part).lstrip(".") or "run"


def status(conn: Connection, path: str, *, timeout: float | None = 30) -> LockInfo | None:
    """The holder of the lock at `path`, or None when it is free."""
    path = _check_path(path)
    for _ in range(_FRESH_RETRIES):
        res = conn.run(["sh", "-c", _STAT, "sh", path], timeout=timeout)
        if res.rc == _HELD:
            return None
        if res.rc != 0:
            raise ModuleError(f"cannot read deploy lock {path}: {res.err.strip()[-300:]}", path=conn.host)
        first, _, rest = res.stdout.partition(b"\n")
        try:
            mtime = float(first.strip() or 0)
        except ValueError:
            mtime = 0.0
        holder = LockInfo.from_json(rest, fallback_time=mtime)
        # a lock taken a moment ago may not show its info.json yet (it is written right after
        # mkdir, in the same command): look again before calling the holder unknown
        if holder.run_id or holder.age() > 5:
            return holder
        time.sleep(0.1)
    return holder


def release(conn: Connection, path: str, run_id: str, *, part: str = "", timeout: float | None = 30) -> bool:
    """Leave the lock if `run_id` holds it, removing it when `part` (as given to `acquire`) is the
    last part of the run in it; True when this part left, False when free or held by another
    run (then it is left alone)."""
    if not run_id:
        return False
    # one round trip: the host checks the holder's run id itself, then removes by rename + rm
    argv = ["sh", "-c", _RELEASE, "sh", _check_path(path), json.dumps(run_id), _part_name(part or run_id)]
    res = conn.run(argv, timeout=timeout)
    if res.rc in (0, _LEFT):
        return True
    if res.rc == _HELD:
        return False
    raise ModuleError(f"cannot remove deploy lock {path}: {res.err.strip()[-300:]}", path=conn.host)


def break_lock(conn: Connection, path: str, *, timeout: float | None = 30) -> LockInfo | None:
    """Remove the lock whoever holds it (an operator's explicit action). Returns the holder
    that was removed, or None when it was free."""
    holder = status(conn, path, timeout=timeout)
    if holder is not None:
        _remove(conn, _check_path(path), timeout)
    return holder


def _remove(conn: Connection, path: str, timeout: float | None) -> None:
    # rename first: a run that mkdirs the same path right after sees a fresh, empty lock
    # instead of racing our recursive removal
    script = 't="$1.released-$$"; mv -T -- "$1" "$t" 2>/dev/null || exit 0; rm -rf -- "$t"'
    res = conn.run(["sh", "-c", script, "sh", path], timeout=timeout)
    if res.rc != 0:
        raise ModuleError(f"cannot remove deploy lock {path}: {res.err.strip()[-300:]}", path=conn.host)


def acquire_all(
    conns: Mapping[str, Callable[[], Connection]],
    path: str,
    info: LockInfo,
    *,
    part: str = "",
    workers: int = 32,
    timeout: float | None = 30,
) -> tuple[list[str], dict[str, ConnectionFailed]]:
    """Acquire on every host at once. `conns` maps host name to a function returning its open
    connection. Returns (hosts locked, hosts unreachable with their error). If any host is held
    by another run, the locks taken here are released and that `LockHeld` is raised."""
    held: list[LockHeld] = []
    unreachable: dict[str, ConnectionFailed] = {}
    got: list[str] = []
    errors: list[Exception] = []

    def one(host: str) -> None:
        try:
            acquire(conns[host](), path, info, part=part, timeout=timeout)
            got.append(host)
        except LockHeld as exc:
            held.append(exc)
        except ConnectionFailed as exc:
            unreachable[host] = exc
        except Exception as exc:  # reported after the others finished
            errors.append(exc)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(conns) or 1))) as ex:
        list(ex.map(one, list(conns)))
    if held or errors:
        release_all({h: conns[h] for h in got}, path, info.run_id, part=part, workers=workers, timeout=timeout)
        raise (held[0] if held else errors[0])
    return sorted(got), unreachable


def release_all(
    conns: Mapping[str, Callable[[], Connection]],
    path: str,
    run_id: str,
    *,
    part: str = "",
    workers: int = 32,
    timeout: float | None = 30,
) -> dict[str, Exception]:
    """Release our lock on every host (best effort); returns the hosts that failed."""
    failed: dict[str, Exception] = {}

    def one(host: str) -> None:
        try:
            release(conns[host](), path, run_id, part=part, timeout=timeout)
        except Exception as exc:  # a host gone since: its lock stays until broken
            failed[host] = exc

    if conns:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(conns)))) as ex:
            list(ex.map(one, list(conns)))
    return failed
