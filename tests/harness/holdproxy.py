"""A TCP proxy on loopback that holds a download in flight until the test lets it go.

Put between a client and a real server (moto's S3, Verdaccio), it forwards every byte both
ways, except that once a response has sent `hold_after` bytes to the client, the proxy stops
forwarding it: `holding` is set, and the rest follows only after `release()`. So a test can
act (e.g. type Ctrl-C) while a download is certainly part-way, instead of hoping a sleep
lands in the middle of one.
"""

from __future__ import annotations

import socket
import threading

__all__ = ["HoldProxy"]


class HoldProxy:
    """`HoldProxy(("127.0.0.1", port))` listens on 127.0.0.1:<free port>; `url` is its address."""

    def __init__(self, upstream: tuple[str, int], *, hold_after: int = 64 * 1024) -> None:
        self.upstream = upstream
        self.hold_after = hold_after
        self.holding = threading.Event()
        self._released = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._closed = True
        self._released.set()
        self._sock.close()

    def __enter__(self) -> HoldProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(16384)
                if not data:
                    break
                if downstream and not self._released.is_set() and sent + len(data) > self.hold_after:
                    keep = max(0, self.hold_after - sent)
                    dst.sendall(data[:keep])
                    sent += keep
                    data = data[keep:]
                    self.holding.set()
                    self._released.wait()
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
