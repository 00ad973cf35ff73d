"""Fan-out benchmark: connect + authenticate + run `true` on N real sshd hosts.

    python bench/fanout.py                 # N=200, 50 threads
    python bench/fanout.py -n 50 --threads 20 --workdir /tmp/fanout

Times (a) a lean hand-written paramiko fan-out (the floor: one parsed known_hosts, one loaded
key, TCP_NODELAY, Transport without SSHClient) and (b) the same through `ConnectionPool`.
`start_fleet()` starts the fleet and writes an inventory, for benchmarks that add more cases.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paramiko  # noqa: E402

from engine.connection.pool import ConnectionPool  # noqa: E402
from tests.harness.sshd import FleetHost, SshdFleet  # noqa: E402

__all__ = ["start_fleet", "lean_fanout", "pool_fanout", "playbook_fanout", "main"]

FANOUT_PLAYBOOK = """\
name: fanout
fleets:
  web: {hosts: web}
steps:
  - {id: noop, module: command, fleet: web, args: {argv: ["true"]}}
"""


def playbook_fanout(inventory: Path, workdir: Path, *, forks: int = 50) -> float:
    """Wall time of a whole `playbook run` process doing `true` on every host."""
    import subprocess

    pb = Path(workdir) / "fanout.yml"
    pb.write_text(FANOUT_PLAYBOOK)
    cmd = [
        sys.executable,
        "-m",
        "engine.cli",
        "run",
        str(pb),
        "-i",
        str(inventory),
        "--forks",
        str(forks),
        "--format",
        "json",
        "--state-dir",
        str(Path(workdir) / "state"),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"playbook run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return took


def start_fleet(
    n: int, workdir: str | os.PathLike, *, group: str = "web", extra_vars: dict | None = None
) -> tuple[SshdFleet, Path]:
    """Start `n` sshd hosts under `workdir` and write `workdir/inventory.yml`. Stop the fleet yourself."""
    fleet = SshdFleet(n, Path(workdir) / "fleet").start()
    inventory = fleet.write_inventory(Path(workdir) / "inventory.yml", group=group, extra_vars=extra_vars)
    return fleet, inventory


def lean_fanout(fleet: SshdFleet, *, threads: int = 50) -> float:
    """Seconds to connect, verify, authenticate and run `true` on every host with bare paramiko."""
    known = paramiko.HostKeys(str(fleet.known_hosts))
    key = paramiko.Ed25519Key(filename=str(fleet.client_key))

    def one(h: FleetHost) -> int:
        sock = socket.create_connection((h.address, h.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = paramiko.Transport(sock)
        try:
            t.start_client(timeout=10)
            offered = t.get_remote_server_key()
            entry = known.lookup(h.known_hosts_name)
            expected = entry.get(offered.get_name()) if entry is not None else None
            if expected is None or expected.asbytes() != offered.asbytes():
                raise RuntimeError(f"{h.name}: host key mismatch")
            t.auth_publickey("root", key)
            chan = t.open_session()
            chan.exec_command("true")
            return chan.recv_exit_status()
        finally:
            t.close()

    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as ex:
        rcs = list(ex.map(one, fleet.hosts))
    elapsed = time.monotonic() - t0
    assert rcs == [0] * len(fleet.hosts), rcs
    return elapsed


def pool_fanout(fleet: SshdFleet, *, threads: int = 50) -> tuple[float, float]:
    """(seconds to open + run `true` on every host through ConnectionPool, seconds to close all)."""
    hosts = fleet.model_hosts()
    pool = ConnectionPool()
    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as ex:
        rcs = list(ex.map(lambda h: pool.get(h).run(["true"]).rc, hosts))
    elapsed = time.monotonic() - t0
    t1 = time.monotonic()
    pool.close_all()
    closing = time.monotonic() - t1
    assert rcs == [0] * len(hosts), rcs
    return elapsed, closing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--hosts", type=int, default=200)
    ap.add_argument("--threads", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3, help="time each fan-out this many times")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    ns = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fanout-") as tmp:
        workdir = ns.workdir or Path(tmp)
        t0 = time.monotonic()
        fleet, inventory = start_fleet(ns.hosts, workdir)
        try:
            print(
                f"fleet: {ns.hosts} sshd up on port {fleet.port} in {time.monotonic() - t0:.2f}s; inventory {inventory}"
            )
            for rep in range(ns.repeats):
                lean = lean_fanout(fleet, threads=ns.threads)
                pooled, closing = pool_fanout(fleet, threads=ns.threads)
                whole = playbook_fanout(inventory, workdir, forks=ns.threads)
                print(
                    f"run {rep + 1}: lean paramiko {lean:.2f}s | ConnectionPool {pooled:.2f}s"
                    f" (+{closing:.2f}s close_all) | playbook run (whole process) {whole:.2f}s"
                    f" | {ns.threads} threads, {ns.hosts} hosts",
                    flush=True,
                )
        finally:
            fleet.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
