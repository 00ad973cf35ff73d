"""A real Prometheus server (Debian's `prometheus`) on loopback, scraping `Loopback`, a small
HTTP server the test controls: `/metrics` serves the gauges the test sets, `/healthz` the status
and body the test sets (the stand-in for a preview's pods, which the control plane has none of).

Tests synchronise on Prometheus's API: `Prometheus.wait_for_value` polls the query API until it
answers the value the test set, so no test sleeps for a scrape."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["Loopback", "Prometheus", "missing_prometheus"]


def missing_prometheus() -> str | None:
    return None if shutil.which("prometheus") else "prometheus (apt-get install prometheus)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Loopback:
    """`/metrics` (Prometheus text format of `gauges`) and `/healthz` (`health`: status, body)."""

    def __init__(self) -> None:
        self.gauges: dict[str, float] = {}
        self.health: tuple[int, str] = (200, "ok")
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                owner.requests.append(self.path)
                if self.path == "/metrics":
                    status = 200
                    body = "".join(f"# TYPE {k} gauge\n{k} {v}\n" for k, v in sorted(owner.gauges.items()))
                else:
                    status, body = owner.health if self.path == "/healthz" else (404, "not found")
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                # a scrape cut short (Prometheus's timeout under load) must not print a traceback
                # into whichever test's output is being captured at that moment
                import sys

                owner.errors.append(repr(sys.exc_info()[1])[:200])

        self.errors: list[str] = []
        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="loopback-http", daemon=True)

    def start(self) -> Loopback:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Prometheus:
    """`prometheus` scraping `target` (host:port) every second, its API on `url`."""

    def __init__(self, root: Path, target: str) -> None:
        self.root = Path(root)
        self.target = target
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Prometheus:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: canary\n    static_configs: [{{targets: ['{self.target}']}}]\n"
        )
        log = open(self.root / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.root / 'prometheus.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def query(self, q: str) -> list:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())["data"]["result"]

    def wait_for_value(self, q: str, value: float, timeout: float = 60) -> None:
        """Until the API answers `value` for `q` (the scrape that carries it has landed)."""
        deadline = time.monotonic() + timeout
        seen: list = []
        while time.monotonic() < deadline:
            seen = self.query(q)
            if len(seen) == 1 and float(seen[0]["value"][1]) == value:
                return
            time.sleep(0.2)
        raise AssertionError(f"prometheus never answered {value} for {q!r} (last: {seen})")
