"""The TCP socket under an SSH connection: no Nagle on our side, no delayed ACKs either.

`TCP_NODELAY` stops our own small packets from waiting for the server's ACK. The server's side
is not ours: OpenSSH's sshd turns Nagle off only when a session starts, so the packets it sends
after authentication (the host-keys notice, the debug messages of `authorized_keys` options, the
channel-open confirmation) go out one at a time, each waiting for our ACK of the one before. A
Linux client delays that ACK by 40 ms, so every connection's first channel took ~44 ms to open
on loopback instead of ~2 ms (a waste at any distance). `TCP_QUICKACK` makes the kernel ACK at
once, but it is not sticky (the kernel goes back to delayed ACKs on its own), so it is set again
before every read, as database drivers do (where the option does not exist, not on Linux, reads
are plain ones).

Closing shuts the socket down first. paramiko's transport thread sits in `recv` on it, and on
Linux closing a socket does not wake a `recv` that another thread is blocked in; a shutdown does.
So the thread ends at once rather than at its next read timeout, and that timeout can be long:
paramiko polls every 0.1 s, ~0.5 ms of controller CPU per connection-second on the benchmark
machine (0.7 s of a 200-host run), for nothing but to notice a close (engine/connection/ssh.py).
"""

from __future__ import annotations

import socket

__all__ = ["QuickAckSocket", "open_tcp"]

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class QuickAckSocket(socket.socket):
    """A socket that asks for an immediate ACK of whatever it is about to read, and wakes a
    reader blocked on it when it is closed."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if _QUICKACK is not None:
            self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return super().recv(bufsize, flags)

    def close(self) -> None:
        if self.fileno() != -1:
            try:
                self.shutdown(socket.SHUT_RDWR)
            except OSError:  # not connected (any more): nothing to wake
                pass
        super().close()


def open_tcp(address: str, port: int, timeout: float) -> socket.socket:
    """Connect to `address:port` within `timeout` seconds, with the options above and keepalives.

    Raises what `socket.create_connection` raises.
    """
    plain = socket.create_connection((address, port), timeout=timeout)
    sock = QuickAckSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
    sock.settimeout(timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return sock
