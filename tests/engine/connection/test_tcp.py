"""engine/connection/tcp.py: the socket under SSH keeps asking for immediate ACKs."""

from __future__ import annotations

import platform
import socket
import threading
from pathlib import Path

import pytest

from engine.connection.tcp import QuickAckSocket, open_tcp

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")


@pytest.fixture
def pong_port():
    """A loopback server answering every 4-byte `ping` with `pong`, as a request/response peer."""
    srv = socket.create_server(("127.0.0.1", 0))

    def answer(c: socket.socket) -> None:
        with c:
            while c.recv(4):
                c.sendall(b"pong")

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(c,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


def _quickack_after_rounds(sock: socket.socket, rounds: int = 6) -> list[int]:
    seen = []
    for _ in range(rounds):
        sock.sendall(b"ping")
        assert sock.recv(4) == b"pong"
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK))
    return seen


def test_a_plain_socket_falls_back_to_delayed_acks(pong_port):
    """The kernel behaviour the module works around (and what makes the next test able to fail):
    after a few request/response rounds Linux delays its ACKs again."""
    with socket.create_connection(("127.0.0.1", pong_port)) as plain:
        assert _quickack_after_rounds(plain)[-1] == 0


def test_open_tcp_stays_in_quickack_mode_and_sets_the_other_options(pong_port):
    with open_tcp("127.0.0.1", pong_port, 5.0) as sock:
        assert isinstance(sock, QuickAckSocket)
        assert _quickack_after_rounds(sock) == [1] * 6
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
        assert sock.gettimeout() == 5.0


def test_open_tcp_raises_what_create_connection_raises():
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        open_tcp("127.0.0.1", port, 5.0)


_RECVFROM = {"x86_64": "45", "aarch64": "207"}.get(platform.machine())


def _blocked_in_recv(tid: int) -> bool:
    try:
        return Path(f"/proc/self/task/{tid}/syscall").read_text().split()[0] == _RECVFROM
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(_RECVFROM is None, reason="needs /proc/<tid>/syscall and a known recvfrom number")
def test_closing_wakes_a_reader_blocked_in_recv(pong_port):
    """paramiko's transport thread sits in recv; on Linux a plain close does not wake it."""
    sock = open_tcp("127.0.0.1", pong_port, 5.0)
    sock.settimeout(None)
    got: list[bytes | OSError] = []

    def read() -> None:
        try:
            got.append(sock.recv(4))
        except OSError as exc:
            got.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not _blocked_in_recv(reader.native_id) and reader.is_alive():
        threading.Event().wait(0.01)  # polls a condition (the thread is inside recvfrom)
    assert reader.is_alive() and not got
    sock.close()
    reader.join(timeout=60)
    assert not reader.is_alive(), "the reader is still blocked after close"
    assert got == [b""] or isinstance(got[0], OSError)
