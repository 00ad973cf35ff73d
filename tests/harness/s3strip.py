"""A loopback HTTP proxy in front of an S3 endpoint that drops the conditional headers.

Some S3-compatible stores accept `If-None-Match` / `If-Match` and ignore them. `StrippingProxy`
behaves like one: it forwards every request to the real endpoint (moto's server) without those
headers, so a conditional write always succeeds. Tests point the state backend at it to see the
self-test refuse the store.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["StrippingProxy"]

_DROPPED = {"if-none-match", "if-match"}
_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


class StrippingProxy:
    """`with StrippingProxy(upstream) as proxy:` then use `proxy.endpoint`; `seen` counts the
    conditional headers dropped."""

    def __init__(self, upstream: str) -> None:
        up = urlsplit(upstream)
        if not (up.hostname or "").startswith("127."):
            raise ValueError(f"upstream must be on loopback (got {upstream!r})")
        self.dropped = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {}
                for k, v in self.headers.items():
                    if k.lower() in _DROPPED:
                        outer.dropped += 1
                    elif k.lower() not in _HOP:
                        headers[k] = v
                headers["Host"] = f"{up.hostname}:{up.port}"
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP:
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> StrippingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
