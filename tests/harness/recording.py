"""HTTP servers on loopback that record every request they receive, for tests that must prove
what a client did or did not send (a dry run sends no PURGE, no PUT).

`RecordingServer` answers every request itself (200, a short body); `RecordingProxy` forwards
each request unchanged (Host header included) to a real upstream server - Verdaccio, moto -
and relays the answer, so the real service does the work and the proxy sees the verbs.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["RecordingServer", "RecordingProxy"]

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer"}


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str, upstream: str | None) -> None:
        if not address.startswith("127."):
            raise ValueError(f"'address' must be a loopback address (got {address!r})")
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.upstream = urllib.parse.urlsplit(upstream) if upstream else None
        super().__init__((address, 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Recorder

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)

    def _handle(self) -> None:
        with self.server.lock:
            self.server.requests.append((self.command, self.path))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        up = self.server.upstream
        if up is None:
            data = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            return
        conn = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            conn.close()


class RecordingServer:
    """A loopback HTTP server that answers 200 to every method and records (method, path)."""

    _upstream: str | None = None

    def __init__(self, address: str = "127.0.0.1") -> None:
        self._server = _Recorder(address, self._upstream)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        with self._server.lock:
            return list(self._server.requests)

    def methods(self) -> set[str]:
        return {m for m, _ in self.requests}

    def start(self) -> RecordingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RecordingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RecordingProxy(RecordingServer):
    """A loopback reverse proxy to `upstream` (an http:// URL) that records (method, path)."""

    def __init__(self, upstream: str, address: str = "127.0.0.1") -> None:
        self._upstream = upstream
        super().__init__(address)
