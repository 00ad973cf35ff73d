"""The rsync process of the `rsync` module's apply: its argv, its remote shell (a relay over the
engine's open connection for small transfers, OpenSSH otherwise), the planned deletions, and its
errors translated.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
from collections.abc import Mapping
from typing import Any

from engine.connection import children
from engine.connection.openssh import host_key_refusal, refused_host_key, ssh_command
from engine.errors import CommandTimeout, ConnectionFailed, ModuleError
from engine.module import ApplyContext
from modules._support.rsync_batch import send_batch
from modules._support.transfer_progress import RsyncProgress

__all__ = [
    "RELAY_MAX_BYTES",
    "rsync_options",
    "rsync_argv",
    "is_local",
    "transfer_and_delete",
    "run_rsync",
    "delete_paths",
]


def is_local(target: Any) -> bool:
    return target is None or getattr(target, "connection", "ssh") == "local"


def rsync_options(*, chown: str | None, chmod: str | None) -> list[str]:
    """The options of every rsync that applies a plan, sending (`rsync_argv`) or reading a
    batch (modules/_support/rsync_batch.py).

    `-I` makes rsync rewrite every named file (temp + rename) even when size and mtime match
    (content or mode-only changes): a new inode, so a hard-linked older release is never written
    through. No `--inplace`, for the same reason.
    """
    options = ["-a", "--no-owner", "--no-group", "-I", "--mkpath", "--force"]
    if chown:
        options.append(f"--chown={chown}")
    if chmod:
        options.append(f"--chmod={chmod}")
    return options


def rsync_argv(
    target: Any, src: str, dest_dir: str, *, chown: str | None, chmod: str | None, rsh: str | None = None
) -> list[str]:
    """argv of one rsync that sends the paths named on stdin (NUL-separated) from `src` to
    `dest_dir` on `target`. Deletions are not rsync's: see `delete_paths`."""
    argv = ["rsync", *rsync_options(chown=chown, chmod=chmod), "--from0", "--files-from=-"]
    source = src.rstrip("/") + "/"
    if is_local(target):
        return argv + [source, dest_dir.rstrip("/") + "/"]
    host = target.hostname
    if ":" in host:
        host = f"[{host}]"
    if rsh is None:
        rsh = " ".join(shlex.quote(p) for p in ssh_command(target))
    return argv + ["-e", rsh, source, f"{host}:{dest_dir.rstrip('/')}/"]


def transfer_and_delete(
    ctx: ApplyContext,
    src: str,
    root: str,
    paths: list[str],
    deletions: list[str],
    files: Mapping[str, tuple[int, int]],
    *,
    chown: str | None,
    chmod: str | None,
) -> None:
    """Send the planned paths of `src` to `root` and remove the planned deletions. A deleted path
    is never in the source, so nothing the transfer writes is under it, and the order does not
    matter. A small change over ssh goes as a batch written once for all hosts that need it
    (modules/_support/rsync_batch.py). Otherwise one rsync per host: over ssh, the shell that
    starts the host's rsync (`--rsync-path`) deletes first, no session more than rsync's own;
    for a local target, or a deletion list over 32 KB, the deletion runs over the engine's
    connection while rsync transfers. `files` are the regular files among `paths`, with their
    sizes and mtimes in the source."""
    if paths and not chown and not is_local(ctx.target) and all(_inside(p) for p in deletions):
        if send_batch(ctx, src, root, paths, deletions, rsync_options(chown=None, chmod=chmod), files):
            return
    nbytes = sum(size for size, _ in files.values())
    argv = rsync_argv(ctx.target, src, root, chown=chown, chmod=chmod)
    if not deletions:
        if paths:
            run_rsync(ctx, argv, paths, nbytes)
        return
    if not paths:
        delete_paths(ctx, root, deletions)
        return
    if not is_local(ctx.target):
        remote = f"cd -- {shlex.quote(root)} && rm -rf -- {' '.join(shlex.quote(p) for p in deletions)} && exec rsync"
        if all(_inside(p) for p in deletions) and len(remote) <= _MAX_RSYNC_PATH:
            # the host's rsync is started by a shell that deletes first: no extra session
            run_rsync(ctx, [*argv[:-2], f"--rsync-path={remote}", *argv[-2:]], paths, nbytes)
            return
    failed: list[BaseException] = []

    def delete() -> None:
        try:
            delete_paths(ctx, root, deletions)
        except BaseException as exc:  # re-raised below, in the step's own thread
            failed.append(exc)

    worker = threading.Thread(target=delete, name=f"rsync-delete-{ctx.host}", daemon=True)
    worker.start()
    try:
        run_rsync(ctx, argv, paths, nbytes)
    finally:
        worker.join()
    if failed:
        raise failed[0]


_MAX_RSYNC_PATH = 32 * 1024  # longer deletion lists go over the engine's connection instead


def _inside(path: str) -> bool:
    return bool(path) and not path.startswith("/") and ".." not in path.split("/")


def delete_paths(ctx: ApplyContext, root: str, paths: list[str]) -> None:
    """Remove the planned deletions (paths relative to `root`) on the host, over the engine's
    connection (while rsync transfers: see `transfer_and_delete`).

    Not rsync's `--delete-missing-args`: the rsync 3.2.7 of Debian bookworm's main archive
    (3.2.7-1+deb12u6) rejects its own file list then ("invalid file mode 00 ... protocol
    incompatibility"), and a deploy that only deletes needs no rsync connection at all."""
    if not paths:
        return
    for p in paths:  # the planner's relative paths; anything else is a bug, never a deletion
        if not _inside(p):
            raise ModuleError(f"refusing to delete {p!r}: not a path inside {root}", path=ctx.host or "")
    assert ctx.conn is not None
    stdin = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in paths)
    res = ctx.conn.run(
        ["sh", "-c", 'cd -- "$1" && xargs -0r rm -rf --', "sh", root], stdin=stdin, timeout=ctx.remaining()
    )
    if res.rc != 0:
        raise ModuleError(
            f"could not delete {len(paths)} paths under {root}: {_tail(res.err, 400)}", path=ctx.host or ""
        )


def _tail(text: str, n: int = 800) -> str:
    text = text.strip()
    return text[-n:] if text else ""


#: Up to this many bytes of file data per host, rsync's remote shell is a `Relay` over the
#: engine's open connection instead of a new OpenSSH connection. A relayed byte costs the
#: controller more CPU than one through OpenSSH (paramiko frames each packet in Python), a new
#: connection costs both ends a process, a key exchange and a login (docs/connections.md).
RELAY_MAX_BYTES = 8 << 20


def run_rsync(ctx: ApplyContext, argv: list[str], paths: list[str], nbytes: int) -> None:
    stdin = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in paths)
    timeout = ctx.remaining()
    relay = None
    if nbytes <= RELAY_MAX_BYTES and "-e" in argv and getattr(ctx.conn, "stream", None) is not None:
        from engine.connection.relay import Relay

        relay = Relay(ctx.conn)  # type: ignore[arg-type]
        argv = list(argv)
        argv[argv.index("-e") + 1] = relay.rsh
    meter = RsyncProgress(ctx.progress, nbytes)  # bytes done, from rsync's own --info=progress2
    try:
        proc = children.popen(  # its own session: a terminal's Ctrl-C is for playbook alone
            meter.argv(argv),
            stdin=subprocess.PIPE,
            stdout=meter.stdout,
            stderr=subprocess.PIPE,
            pass_fds=relay.pass_fds if relay else (),
        )
    except FileNotFoundError:
        meter.finish()
        if relay:
            relay.finish(0)
        raise ModuleError("the 'rsync' program is not installed on the controller", path=ctx.host or "") from None
    meter.started()
    if relay:
        relay.start()
    try:
        _, err_bytes = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        children.kill_group(proc)
        raise CommandTimeout(f"rsync timed out after {timeout:g}s", path=ctx.host or "") from None
    except BaseException:
        children.kill_group(proc)
        raise
    finally:
        meter.finish()
        children.forget(proc)
        if relay:
            relay.finish(ctx.remaining())
    children.check_abort()
    err = err_bytes.decode("utf-8", "replace")
    if relay:
        if relay.error is not None:
            raise relay.error
        remote = relay.stderr.decode("utf-8", "replace").strip()
        if proc.returncode == 0 and relay.status not in (0, None):
            raise ModuleError(f"the host's rsync exited {relay.status}: {_tail(remote)}", path=ctx.host or "")
        err = "\n".join(t for t in (err.strip(), remote) if t)
    if proc.returncode == 0:
        return
    if refused_host_key(err):
        raise host_key_refusal(ctx.target, err, who="rsync's ssh", host=ctx.host or "")
    if proc.returncode == 255 and not relay:
        raise ConnectionFailed(f"rsync could not reach the host over ssh: {_tail(err, 400)}", host=ctx.host or "")
    raise ModuleError(f"rsync exited {proc.returncode}: {_tail(err)}", path=ctx.host or "")
