"""SSHConnection and ConnectionPool against real sshd servers on loopback."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import threading
import time

import paramiko
import pytest

from engine.connection.base import Connection
from engine.connection.keys import KnownHosts
from engine.connection.local import LocalConnection
from engine.connection.pool import ConnectionPool
from engine.connection.ssh import SSHConnection, build_command
from engine.connection.tcp import QuickAckSocket
from engine.errors import CommandTimeout, ConnectionFailed, HostKeyError, ModuleError
from tests.harness.sshd import _children_map

pytestmark = pytest.mark.fleet


@pytest.fixture(scope="module")
def pool(sshd_fleet):
    with ConnectionPool(connect_timeout=5) as p:
        yield p


@pytest.fixture(scope="module")
def hosts(sshd_fleet):
    return sshd_fleet.model_hosts()


@pytest.fixture
def conn(pool, hosts) -> SSHConnection:
    c = pool.get(hosts[0])
    assert isinstance(c, SSHConnection)
    return c


def _fresh(host, known_hosts_path, **kw) -> SSHConnection:
    return SSHConnection(host, KnownHosts(known_hosts_path), connect_timeout=kw.pop("connect_timeout", 5), **kw)


# -- run -----------------------------------------------------------------------------------


def test_implements_the_protocol(conn):
    assert isinstance(conn, Connection)


def test_argv_with_awkward_quoting_arrives_intact(conn):
    parts = ["a b", "it's", '"double"', "$HOME", "`id`", "x;y", "*", "", "back\\slash", "new\nline", "ünï"]
    res = conn.run(["printf", "%s\\0", *parts])
    assert res.rc == 0, res.err
    assert res.stdout.split(b"\0")[:-1] == [p.encode() for p in parts]


def test_shell_string_env_and_cwd(conn, sshd_fleet):
    d = str(sshd_fleet[0].data_dir)
    res = conn.run('printf "%s|%s|%s" "$GREETING" "$(pwd)" "$0"', shell=True, env={"GREETING": "hi there 'x'"}, cwd=d)
    assert res.out == f"hi there 'x'|{d}|/bin/sh"


def test_missing_cwd_is_a_failed_result_not_an_exception(conn):
    res = conn.run(["true"], cwd="/no/such/dir")
    assert res.rc != 0 and b"/no/such/dir" in res.stderr


def test_bad_env_name_and_bad_argv_are_rejected_before_sending():
    with pytest.raises(ValueError, match="environment variable name"):
        build_command(["true"], env={"A B": "1"})
    with pytest.raises(TypeError):
        build_command("true")
    with pytest.raises(ValueError):
        build_command([])


def test_stdin_round_trip(conn):
    data = bytes(range(256)) * 1000
    res = conn.run(["cat"], stdin=data)
    assert res.rc == 0 and res.stdout == data


def test_five_megabytes_out_and_err_without_deadlock(conn):
    res = conn.run(
        ["sh", "-c", "head -c 5242880 /dev/zero | tr '\\0' a; head -c 3145728 /dev/zero | tr '\\0' e >&2"],
        timeout=30,
    )
    assert res.rc == 0
    assert len(res.stdout) == 5 * 1024 * 1024 and set(res.stdout) == {ord("a")}
    assert len(res.stderr) == 3 * 1024 * 1024 and set(res.stderr) == {ord("e")}


def test_output_past_the_limit_is_read_and_dropped(conn, monkeypatch):
    from engine.connection import ssh

    monkeypatch.setattr(ssh, "MAX_OUTPUT", 1024 * 1024)  # 64 MiB in use; 1 MiB keeps the test quick
    res = conn.run(
        ["sh", "-c", "head -c 5242880 /dev/zero | tr '\\0' a; head -c 3145728 /dev/zero | tr '\\0' e >&2"],
        timeout=60,
    )
    assert res.rc == 0
    assert res.stdout == b"a" * 1024 * 1024 and res.stderr == b"e" * 1024 * 1024
    assert res.dropped == 6 * 1024 * 1024
    assert conn.run(["echo", "next"]).stdout == b"next\n"  # the connection is still usable
    with pytest.raises(ModuleError, match="is over 1048576 bytes"):
        conn.get("/dev/zero")  # a file is refused whole, never cut, and the endless read stops
    assert conn.run(["echo", "after"]).stdout == b"after\n"


def test_large_stdin_while_output_flows_does_not_deadlock(conn):
    data = os.urandom(5 * 1024 * 1024)
    res = conn.run(["cat"], stdin=data, timeout=30)
    assert res.stdout == data


def test_stdin_waits_for_a_command_that_reads_it_late(conn):
    # the command prints 5 MB before it reads: our stdin fills the channel's window and must wait
    data = os.urandom(5 * 1024 * 1024)
    res = conn.run(
        ["sh", "-c", "head -c 5000000 /dev/zero; head -c 100000 /dev/zero >&2; exec cat"], stdin=data, timeout=60
    )
    assert res.rc == 0
    assert res.stdout == bytes(5_000_000) + data
    assert res.stderr == bytes(100_000)


def test_nonzero_rc_and_stderr_are_returned(conn):
    res = conn.run(["sh", "-c", "echo oops >&2; exit 7"])
    assert (res.rc, res.err, res.ok) == (7, "oops\n", False)
    assert conn.run(["/no/such/program"]).rc == 127


def test_timeout_raises_and_connection_stays_usable(conn):
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout, match="timed out after 0.5s"):
        conn.run(["sleep", "120"], timeout=0.5)
    assert time.monotonic() - t0 < 60  # cut off, not waited for (generous: a loaded machine)
    assert conn.run(["echo", "still here"]).out == "still here\n"


def test_tcp_nodelay_is_set(conn):
    sock = conn.transport.sock
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_the_transport_reads_through_the_quick_ack_socket(conn):
    """sshd keeps Nagle on until a session starts; a delayed ACK of ours held each connection's
    first channel open for ~40 ms. The transport reads through the socket that re-arms
    TCP_QUICKACK before every read (its kernel effect: tests/engine/connection/test_tcp.py)."""
    for i in range(4):
        assert conn.run(["echo", str(i)]).out == f"{i}\n"
    assert type(conn.transport.sock) is QuickAckSocket


def test_the_transport_thread_polls_once_a_second_and_ends_on_close(sshd_fleet):
    """paramiko's 0.1 s read timeout cost ~0.5 ms of CPU per connection-second; closing the
    socket wakes the thread instead (tests/engine/connection/test_tcp.py)."""
    c = SSHConnection(sshd_fleet.model_hosts()[0], KnownHosts(sshd_fleet.known_hosts), connect_timeout=5)
    c.open()
    t = c.transport
    assert t.sock.gettimeout() == 1.0
    assert c.run(["echo", "ok"]).out == "ok\n"
    c.close()
    t.join(timeout=60)
    assert not t.is_alive()


# -- put / get -----------------------------------------------------------------------------


def test_packet_macs_are_compared_in_c_and_still_reject_a_mismatch(conn):
    """paramiko checks each packet's MAC with a Python loop; the engine swaps in hmac's C
    compare (same answers, constant time), 40 times cheaper per packet."""
    import hmac

    assert paramiko.util.constant_time_bytes_eq is hmac.compare_digest
    check = paramiko.util.constant_time_bytes_eq
    assert check(b"\x01" * 32, b"\x01" * 32) and not check(b"\x01" * 32, b"\x01" * 31 + b"\x02")
    assert not check(b"\x01" * 32, b"\x01" * 20)
    assert conn.run(["echo", "mac"]).stdout == b"mac\n"  # every packet of it passed the check


def test_put_is_atomic_sets_mode_and_get_reads_back(conn, sshd_fleet):
    d = sshd_fleet[0].data_dir
    target = d / "conf" / "app's file.txt"
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(b"old")
    old_inode = target.stat().st_ino
    conn.put(str(target), b"new contents\n", mode=0o640)
    st = target.stat()
    assert target.read_bytes() == b"new contents\n"
    assert st.st_mode & 0o7777 == 0o640
    assert st.st_ino != old_inode  # replaced by rename, not rewritten in place
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp file left
    assert conn.get(str(target)) == b"new contents\n"


def test_put_without_mode_is_private_like_local(conn, sshd_fleet):
    target = sshd_fleet[0].data_dir / "private.txt"
    conn.put(str(target), b"")
    assert target.read_bytes() == b"" and target.stat().st_mode & 0o777 == 0o600


def test_put_into_missing_directory_fails_cleanly(conn):
    with pytest.raises(ModuleError, match="cannot write /no/such/dir/f"):
        conn.put("/no/such/dir/f", b"x")


def test_put_onto_a_directory_refuses(conn, sshd_fleet):
    d = sshd_fleet[0].data_dir / "adir"
    d.mkdir(exist_ok=True)
    with pytest.raises(ModuleError, match="is a directory"):
        conn.put(str(d), b"x")
    assert list(d.iterdir()) == []


def test_get_missing_is_none_and_other_errors_raise(conn, sshd_fleet):
    assert conn.get(str(sshd_fleet[0].data_dir / "nope")) is None
    with pytest.raises(ModuleError, match="Is a directory"):
        conn.get(str(sshd_fleet[0].data_dir))


# -- host keys -----------------------------------------------------------------------------


def test_unknown_host_key_fails_only_that_host(sshd_fleet, hosts, tmp_path):
    kh = sshd_fleet.write_known_hosts(tmp_path / "kh", only=[1, 2])
    mine = [dataclasses.replace(h, known_hosts=str(kh)) for h in hosts]
    fp = paramiko.Ed25519Key(filename=str(sshd_fleet[0].host_key)).fingerprint
    with ConnectionPool(connect_timeout=5) as p:
        with pytest.raises(HostKeyError) as info:
            p.get(mine[0])
        for h in mine[1:]:
            assert p.get(h).run(["true"]).rc == 0
    err = info.value
    assert err.host == "host01" and err.fingerprint == fp and fp.startswith("SHA256:")
    assert "=" not in fp  # OpenSSH style: unpadded base64
    text = str(err)
    assert f"unknown host key ssh-ed25519 {fp} not in {kh}" in text
    assert "host01" in text and "127.0.0.10" in text and "verify it out of band" in text


def test_hashed_known_hosts_entries_are_accepted(sshd_fleet, hosts, tmp_path):
    kh = sshd_fleet.write_known_hosts(tmp_path / "kh")
    subprocess.run(["ssh-keygen", "-H", "-f", str(kh)], check=True, capture_output=True)
    assert "|1|" in kh.read_text()
    c = _fresh(hosts[0], kh)
    c.open()
    try:
        assert c.run(["true"]).rc == 0
    finally:
        c.close()


def test_changed_host_key_is_refused_with_both_fingerprints(sshd_fleet, hosts, tmp_path):
    h0, h1 = sshd_fleet[0], sshd_fleet[1]
    kh = tmp_path / "kh"
    other_key = " ".join(h1.host_key_pub.split()[:2])
    kh.write_text(f"{h0.known_hosts_name} {other_key}\n")
    offered = paramiko.Ed25519Key(filename=str(h0.host_key)).fingerprint
    known = paramiko.Ed25519Key(filename=str(h1.host_key)).fingerprint
    c = _fresh(hosts[0], kh)
    with pytest.raises(HostKeyError, match="CHANGED") as info:
        c.open()
    assert offered in str(info.value) and known in str(info.value)
    assert info.value.fingerprint == offered


def test_revoked_host_key_is_refused(sshd_fleet, hosts, tmp_path):
    kh = sshd_fleet.write_known_hosts(tmp_path / "kh")
    with kh.open("a") as fh:
        fh.write(f"@revoked * {' '.join(sshd_fleet[0].host_key_pub.split()[:2])}\n")
    with pytest.raises(HostKeyError, match="revoked"):
        _fresh(hosts[0], kh).open()


def test_host_name_entry_is_also_accepted(sshd_fleet, hosts, tmp_path):
    h0 = sshd_fleet[0]
    kh = tmp_path / "kh"
    name = "host01" if h0.port == 22 else f"[host01]:{h0.port}"
    kh.write_text(f"{name} {' '.join(h0.host_key_pub.split()[:2])}\n")
    c = _fresh(hosts[0], kh)
    c.open()
    c.close()


# -- connection failures -------------------------------------------------------------------


def test_stopped_sshd_is_connection_failed_then_recovers(fleet_factory):
    fleet = fleet_factory(1)
    host = fleet.model_hosts()[0]
    c = _fresh(host, fleet.known_hosts)
    c.open()
    assert c.run(["true"]).rc == 0
    fleet.stop_host(0)
    with pytest.raises(ConnectionFailed) as info:
        c.run(["true"])
    assert not isinstance(info.value, paramiko.SSHException)
    assert info.value.host == "host01"
    with pytest.raises(ConnectionFailed, match="refused"):
        _fresh(host, fleet.known_hosts).open()
    fleet.start_host(0)
    assert c.run(["echo", "back"]).out == "back\n"  # a dead transport is reopened between commands
    c.close()


def test_connection_lost_during_a_command(fleet_factory):
    fleet = fleet_factory(1)
    c = _fresh(fleet.model_hosts()[0], fleet.known_hosts)
    c.open()
    started = fleet[0].data_dir / "lost-started"

    def kill_once_running() -> None:  # the command is certainly running when the host dies
        deadline = time.monotonic() + 120
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        fleet.stop_host(0)

    killer = threading.Thread(target=kill_once_running)
    killer.start()
    with pytest.raises(ConnectionFailed, match="lost|closed"):
        c.run(["sh", "-c", 'touch "$1"; exec sleep 120', "sh", str(started)], timeout=100)
    killer.join()
    c.close()


def test_pool_fails_fast_with_the_same_error(fleet_factory):
    fleet = fleet_factory(1)
    host = fleet.model_hosts()[0]
    fleet.stop_host(0)
    with ConnectionPool(connect_timeout=2) as p:
        with pytest.raises(ConnectionFailed) as first:
            p.get(host)
        fleet.start_host(0)  # even if it comes back, this run has given up on it
        with pytest.raises(ConnectionFailed) as second:
            p.get(host)
    assert second.value is first.value


def test_auth_failures_say_why(sshd_fleet, hosts, tmp_path):
    with pytest.raises(ConnectionFailed, match="no such file"):
        _fresh(dataclasses.replace(hosts[0], key=str(tmp_path / "missing_key")), sshd_fleet.known_hosts).open()
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(ConnectionFailed, match="authentication failed for user root"):
        _fresh(dataclasses.replace(hosts[0], key=str(stranger)), sshd_fleet.known_hosts).open()


def test_unreachable_port_times_out_or_refuses_quickly(sshd_fleet, hosts):
    closed = dataclasses.replace(hosts[0], port=1)
    t0 = time.monotonic()
    with pytest.raises(ConnectionFailed, match="refused"):
        _fresh(closed, sshd_fleet.known_hosts, connect_timeout=30).open()
    assert time.monotonic() - t0 < 30  # refused at once, not after the connect timeout


def _connections(fleet) -> dict[str, set[int]]:
    """Per host, the PIDs of the per-connection children its sshd has forked."""
    kids = _children_map()
    return {h.name: set(kids.get(h.pid, [])) for h in fleet}


# -- the pool ------------------------------------------------------------------------------


def test_pool_one_transport_per_host_across_threads(sshd_fleet, hosts):
    with ConnectionPool(connect_timeout=5) as p:
        barrier = threading.Barrier(24)
        seen: list[tuple[str, int, int]] = []
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                h = hosts[i % len(hosts)]
                barrier.wait()
                c = p.get(h)  # 8 threads race for each host's first open
                for _ in range(5):
                    res = c.run(["echo", str(i)])
                    assert res.out == f"{i}\n"
                seen.append((h.name, id(c), id(c.transport)))
            except BaseException as exc:
                errors.append(exc)

        before = _connections(sshd_fleet)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        per_host = {}
        for name, cid, tid in seen:
            per_host.setdefault(name, set()).add((cid, tid))
        assert all(len(v) == 1 for v in per_host.values()) and len(per_host) == len(hosts)
        # the servers agree: each sshd forked exactly one new connection for this pool
        after = _connections(sshd_fleet)
        assert {n: len(after[n] - before[n]) for n in after} == {h.name: 1 for h in hosts}


def test_pool_local_connection_and_unknown_type(hosts):
    with ConnectionPool() as p:
        local = p.get(dataclasses.replace(hosts[0], name="ctl", connection="local"))
        assert isinstance(local, LocalConnection) and local.run(["true"]).rc == 0
        with pytest.raises(ConnectionFailed, match="'connection' must be 'ssh', 'local' or 'kubernetes'"):
            p.get(dataclasses.replace(hosts[0], name="odd", connection="telnet"))


def test_pool_parses_each_known_hosts_once(sshd_fleet):
    with ConnectionPool() as p:
        assert p.known_hosts(str(sshd_fleet.known_hosts)) is p.known_hosts(str(sshd_fleet.known_hosts))


def test_concurrent_commands_that_ignore_stdin_keep_the_connection(sshd_fleet, hosts):
    # regression: paramiko could send EOF/data after CLOSE and OpenSSH then dropped the
    # whole connection (paramiko #1705); see ssh._stdin_safe
    c = _fresh(hosts[1], sshd_fleet.known_hosts)
    c.open()
    transport = c.transport
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(15):
                assert c.run(["true"], stdin=b"x" * 100_000).rc == 0
                assert c.run(["true"]).rc == 0
                assert c.run(["sh", "-c", "exit 3"], stdin=b"").rc == 3
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    c.close()
    assert not errors, errors[:3]
    assert transport is not None and c.transport is None  # never reconnected: never dropped
