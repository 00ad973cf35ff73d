"""A host whose port is not an SSH server: one clear line per host, no traceback.

The usual mistake is a wrong `port` in the inventory that reaches a web server, or a server that
accepts and then hangs. paramiko's transport thread logs such a failure (with its traceback) at
ERROR; with no logging set up, Python's last-resort handler printed all of it on stderr. These
run the real process: inside pytest its own log capture would hide what a user sees.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.harness.sshd import host_address

pytestmark = pytest.mark.fleet

PLAYBOOK = """\
name: wrong-port
fleets:
  web: {hosts: web}
steps:
  - {id: noop, module: command, fleet: web, args: {argv: ["true"]}}
"""

REPLIES = {
    "http": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    "closes": b"",
}


@contextlib.contextmanager
def _listener(reply: bytes, *, then_hang: bool = False) -> Iterator[tuple[str, int]]:
    """A TCP server on a loopback address that sends `reply`, then closes (or says no more)."""
    srv = socket.socket()
    srv.bind((host_address(7), 0))
    srv.listen(16)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.sendall(reply)
            if then_hang:
                held.append(conn)
            else:
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield srv.getsockname()
    finally:
        srv.close()
        for c in held:
            c.close()


def _inventory(tmp_path: Path, sshd_fleet, addr: str, port: int) -> Path:
    inv = tmp_path / "inventory.yml"
    doc = {
        "defaults": {
            "connection": "ssh",
            "user": "root",
            "key": str(sshd_fleet.client_key),
            "known_hosts": str(sshd_fleet.known_hosts),
        },
        "hosts": {"web1": {"address": addr, "port": port}},
        "groups": {"web": {"hosts": ["web1"]}},
    }
    inv.write_text(yaml.safe_dump(doc))
    return inv


@pytest.mark.parametrize("kind", sorted(REPLIES))
def test_a_run_against_a_port_that_is_not_ssh_says_so_without_a_traceback(kind, sshd_fleet, tmp_path):
    pb = tmp_path / "pb.yml"
    pb.write_text(PLAYBOOK)
    with _listener(REPLIES[kind]) as (addr, port):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "run",
                str(pb),
                "-i",
                str(_inventory(tmp_path, sshd_fleet, addr, port)),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
            cwd=tmp_path,
            timeout=120,
        )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "Exception (client)" not in proc.stderr
    assert f"web1 ({addr}:{port}): SSH handshake failed: no SSH banner (" in proc.stdout
    # a server that closes with our banner unread sends a reset instead of an end of stream
    said = ["the server closed the connection", "Connection reset by peer"]
    assert any(f"no SSH banner ({s}; is it an SSH server?)" in proc.stdout for s in said), proc.stdout


_SILENT = """\
import sys
from engine.connection.keys import KnownHosts
from engine.connection.ssh import SSHConnection
from engine.errors import ConnectionFailed
from engine.model.config import Host
host = Host(name="web1", address=sys.argv[1], port=int(sys.argv[2]), connection="ssh", user="root", key=sys.argv[3])
try:
    SSHConnection(host, KnownHosts(sys.argv[4]), connect_timeout=1).open()
except ConnectionFailed as exc:
    print(exc)
"""


HANGS = {
    "silent": (b"", "no SSH banner (none within 1s; is it an SSH server?)"),
    "banner only": (b"SSH-2.0-OpenSSH_9.2\r\n", "key exchange with SSH-2.0-OpenSSH_9.2 not finished within 1s"),
}


@pytest.mark.parametrize("kind", sorted(HANGS))
def test_a_server_that_accepts_and_then_hangs_times_out_without_a_traceback(kind, sshd_fleet):
    reply, said = HANGS[kind]
    with _listener(reply, then_hang=True) as (addr, port):
        proc = subprocess.run(
            [sys.executable, "-c", _SILENT, addr, str(port), str(sshd_fleet.client_key), str(sshd_fleet.known_hosts)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == f"web1 ({addr}:{port}): SSH handshake failed: {said}\n"


@pytest.mark.parametrize("locks", [True, False], ids=["lock", "no lock"])
def test_an_unreachable_hosts_step_counts_the_time_its_connect_took(locks, sshd_fleet, tmp_path):
    """The connect is tried ahead of the step (the deploy lock, or the early open): the step that
    reports the failure shows the seconds the attempt took, not the instant it read the result."""
    from engine import api
    from engine.connection.pool import ConnectionPool
    from engine.errors import ConnectionFailed
    from engine.execute.options import RunOptions
    from engine.model.results import Status

    pb = tmp_path / "pb.yml"
    pb.write_text(PLAYBOOK)
    with _listener(b"", then_hang=True) as (addr, port):
        loaded = api.load(str(pb), str(_inventory(tmp_path, sshd_fleet, addr, port)))
        opts = RunOptions(mode="run", state_dir=str(tmp_path / "state"), forks=2, locks=locks)
        pool = ConnectionPool(connect_timeout=1)
        if not locks:  # as the early open does while the run starts
            with pytest.raises(ConnectionFailed):
                pool.get(loaded.inventory.hosts["web1"])
        summary = api.execute(loaded, opts, pool=pool)
    (result,) = summary.results
    assert result.status == Status.UNREACHABLE
    assert "none within 1s" in result.message
    assert result.duration >= 1.0
