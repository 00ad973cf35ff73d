"""Time one whole process: wall time, CPU of its process tree, peak memory of the tree.

- wall: from spawn until the root process exits;
- CPU: user+sys from the RUSAGE_CHILDREN delta around the run. The bench makes itself a child
  subreaper, so daemonised leftovers (ssh ControlMaster processes) reparent to it; they are
  killed and reaped after the root exits, which folds their CPU into the delta too;
- peak memory: the tree's summed RSS, sampled from /proc every ~20 ms, or less often when a
  sample is costly, so the sampler takes at most a tenth of a core (orphans included), and
  the root process's own high-water mark (VmHWM) reported separately as "controller";
- memory used: how far the machine's MemAvailable fell below its value at the start (sampled
  with the RSS). Unlike the summed RSS it counts pages shared by forked workers once, but it
  also moves with whatever else runs on the machine. When MemAvailable falls below
  `min_available` the whole tree is killed (SIGKILL) and the run is reported as killed, so a
  tool that needs more memory than the machine has fails on its own instead of through the OOM
  killer.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Measurement", "run_measured", "become_subreaper", "mem_available"]

_PAGE = os.sysconf("SC_PAGE_SIZE")
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Make orphaned descendants reparent to this process (Linux), so they stay measurable."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except Exception:
        pass


@dataclass
class Measurement:
    """One timed process run."""

    argv: list[str]
    rc: int
    wall: float
    cpu: float
    peak_tree_rss: int  # bytes
    peak_root_rss: int  # bytes (the controller process alone)
    stdout: str = ""
    stderr: str = ""
    samples: int = 0
    extra: dict = field(default_factory=dict)


def _proc_table() -> dict[int, tuple[int, int]]:
    """{pid: (ppid, rss bytes)} for every process."""
    out: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        # fields[0] is state (stat field 3): ppid is field 4, rss (pages) field 24
        try:
            out[int(entry)] = (int(fields[1]), int(fields[21]) * _PAGE)
        except (IndexError, ValueError):
            continue
    return out


def _descendants(table: dict[int, tuple[int, int]], roots: set[int], exclude: set[int]) -> set[int]:
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        p = todo.pop()
        if p in seen or p in exclude:
            continue
        seen.add(p)
        todo.extend(kids.get(p, ()))
    return seen


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def mem_available() -> int:
    """MemAvailable of /proc/meminfo in bytes (0 when unknown)."""
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _kill_pids(pids: set[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_measured(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    exclude_pids: set[int] | None = None,
    timeout: float = 900.0,
    interval: float = 0.02,
    log: Path | None = None,
    min_available: int = 0,
) -> Measurement:
    """Run `argv` to completion and measure it (see the module docstring).

    `exclude_pids`: long-lived children of this process that are not part of the run (the
    fleet's sshd servers): they and their descendants are left out of the tree.
    `min_available`: bytes of MemAvailable to keep; below it the run is killed (0: never).
    """
    exclude = set(exclude_pids or ())
    me = os.getpid()
    # our own long-lived children (sshd servers...) exist before the run: never count them
    before = _proc_table()
    exclude |= {p for p, (pp, _) in before.items() if pp == me}
    cpu0 = _cpu_children()
    avail0 = mem_available()
    lowest = avail0
    killed = ""
    out_path = log or Path(os.devnull)
    with (
        open(f"{out_path}.out" if log else os.devnull, "wb") as out,
        open(f"{out_path}.err" if log else os.devnull, "wb") as err,
    ):
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    peak_tree = 0
    peak_root = 0
    samples = 0
    done = threading.Event()
    status: dict[str, float] = {}

    def reap() -> None:
        # wait4 on the root only: its rusage is folded into RUSAGE_CHILDREN by the kernel
        _, st, _ = os.wait4(proc.pid, 0)
        status["t"] = time.perf_counter()
        status["rc"] = os.waitstatus_to_exitcode(st)
        done.set()

    waiter = threading.Thread(target=reap, daemon=True)
    waiter.start()
    deadline = time.monotonic() + timeout
    timed_out = False
    while not done.is_set():
        t_sample = time.perf_counter()
        table = _proc_table()
        tree = _descendants(table, {proc.pid}, set())
        # orphans adopted by us (subreaper) that are neither the root nor pre-existing children
        orphans = {p for p, (pp, _) in table.items() if pp == me and p not in exclude and p != proc.pid}
        tree |= _descendants(table, orphans, exclude)
        rss = sum(table[p][1] for p in tree if p in table)
        peak_tree = max(peak_tree, rss)
        peak_root = max(peak_root, _vm_hwm(proc.pid))
        avail = mem_available()
        lowest = min(lowest, avail) if avail else lowest
        samples += 1
        if min_available and avail and avail < min_available and not killed:
            killed = (
                f"killed by the bench: MemAvailable fell to {avail / 2**30:.1f} GiB (reserve "
                f"{min_available / 2**30:.1f} GiB) at a tree RSS of {rss / 2**30:.1f} GiB"
            )
            _kill_pids(tree)
        if time.monotonic() > deadline:
            timed_out = True
            os.kill(proc.pid, signal.SIGKILL)
        # the sampler shares the 2 cores with the run: with many processes (N = 200, forked
        # workers) one sample costs milliseconds, so it waits at least 9 samples' time between
        # samples and never takes more than a tenth of one core
        done.wait(max(interval, 9 * (time.perf_counter() - t_sample)))
    wall = status["t"] - t0
    rc = int(status["rc"]) if not timed_out else -9
    _kill_leftovers(me, exclude)
    cpu = _cpu_children() - cpu0
    m = Measurement(
        argv=list(argv), rc=rc, wall=wall, cpu=cpu, peak_tree_rss=peak_tree, peak_root_rss=peak_root, samples=samples
    )
    if log:
        m.stdout = Path(f"{log}.out").read_text(errors="replace")
        m.stderr = Path(f"{log}.err").read_text(errors="replace")
    if avail0:
        m.extra["mem_used"] = max(0, avail0 - lowest)
    if killed:
        m.extra["killed"] = killed
        m.stderr += f"\n[bench] {killed}"
    if timed_out:
        m.stderr += f"\n[bench] killed after {timeout:.0f}s"
    return m


def _kill_leftovers(me: int, exclude: set[int]) -> None:
    """SIGKILL and reap processes the run left behind (e.g. ssh ControlMaster daemons)."""
    for _ in range(50):
        table = _proc_table()
        left = {p for p, (pp, _) in table.items() if pp == me and p not in exclude}
        left = _descendants(table, left, exclude)
        if not left:
            break
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in list(left):
            try:
                os.waitpid(p, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.02)
    # reap any remaining zombies that are ours
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break


def host_cpu(pids: list[int]) -> float:
    """CPU seconds (user + sys) of the finished children of these processes: for the fleet's
    sshd listeners, every connection's sshd and what it ran (shells, find, rsync), once reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total / tick


def wait_children_gone(pids: list[int], timeout: float = 30.0) -> bool:
    """Wait until none of these processes has a child left (every connection's sshd reaped, so
    `host_cpu` has counted it). False when some are still there after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        busy = False
        for pid in pids:
            try:
                if Path(f"/proc/{pid}/task/{pid}/children").read_text().strip():
                    busy = True
                    break
            except OSError:
                continue
        if not busy:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
