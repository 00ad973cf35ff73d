"""The canary's checks against a real loopback HTTP server (tests/harness/prometheus.py's
`Loopback`), and the rules on their arguments."""

from __future__ import annotations

import pytest

from engine.argschema import build
from engine.errors import ArgError
from modules._support.canary_analysis import (
    Analysis,
    HttpCheck,
    PrometheusCheck,
    check_analysis,
    measure_http,
    run_analysis,
)
from tests.harness.prometheus import Loopback


@pytest.fixture
def loop():
    server = Loopback().start()
    yield server
    server.stop()


def test_http_check_status_and_body(loop):
    url = f"{loop.url}/healthz"
    assert measure_http(HttpCheck(url=url, body="^ok$")) is None
    loop.health = (200, "degraded")
    assert measure_http(HttpCheck(url=url, body="^ok$")) == f"GET {url}: body does not match '^ok$'"
    loop.health = (500, "boom")
    assert measure_http(HttpCheck(url=url)) == f"GET {url}: status 500 (expected 200)"
    assert measure_http(HttpCheck(url=url, status=500)) is None


def test_every_measurement_must_pass(loop):
    seen: list[str] = []
    analysis = Analysis(http=HttpCheck(url=f"{loop.url}/healthz"), count=3, interval=0.01)
    assert run_analysis(analysis, seen.append) is None
    assert seen == [f"canary: measurement {i}/3 passed" for i in (1, 2, 3)]
    assert loop.requests.count("/healthz") == 3
    loop.health = (503, "down")
    assert run_analysis(analysis, seen.append).startswith("measurement 1/3 failed: GET")


def test_what_is_not_an_answer_fails(loop):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    for url, why in [
        (f"{loop.url}/nowhere", "status 404, not a Prometheus API answer"),
        (closed, "refused"),
    ]:
        analysis = Analysis(prometheus=PrometheusCheck(url=url, query="up", at_most=1), count=1, interval=1)
        failed = run_analysis(analysis, lambda _: None)
        assert failed.startswith(f"measurement 1/1 failed: prometheus {url}") and why in failed, failed


@pytest.mark.parametrize(
    "given, error",
    [
        ({}, "'analysis' needs 'http' or 'prometheus'"),
        ({"http": {"url": "http://x/"}, "count": 0}, "'analysis.count' must be at least 1 (got 0)"),
        ({"http": {"url": "http://x/"}, "interval": 0}, "'analysis.interval' must be more than 0"),
        ({"http": {"url": "x.example/health"}}, "'x.example/health' must be an http(s) URL"),
        ({"prometheus": {"url": "http://p:9090", "query": "up"}}, "needs 'at_most' or 'at_least'"),
        ({"http": {"url": "http://x/", "body": "("}}, "'analysis.http.body' must be a regular expression"),
    ],
)
def test_argument_rules(given, error):
    with pytest.raises(ArgError, match=error.replace("(", r"\(").replace(")", r"\)")):
        check_analysis(build(Analysis, given, path="a"), "steps.canary.args")
