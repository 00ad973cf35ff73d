"""The canary's checks, before promotion (against the preview) and while watching after it:
an HTTP request (status, optional body match) and a Prometheus instant query held against a
threshold, each measured `count` times, `interval` seconds apart. Any failed measurement fails
the analysis at once; a query that returns no data is a failure, never a pass (as Argo Rollouts
and Flagger count it). Only reads: nothing here changes the cluster."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import ArgError
from engine.model import jsonable
from engine.module import arg
from engine.secrets import SCRUBBER

__all__ = [
    "check_analysis",
    "HttpCheck",
    "PrometheusCheck",
    "Analysis",
    "measure",
    "measure_http",
    "measure_prometheus",
    "run_analysis",
]


@dataclass(frozen=True)
class HttpCheck:
    url: str = arg(doc="URL to GET, http or https (for the pre-promotion check: the preview's address).")
    status: int = arg(200, doc="The status code that counts as success.")
    body: str | None = arg(None, doc="A regular expression the response body must match (search, not full match).")
    timeout: float = arg(5.0, doc="Seconds to wait for the response.")


@dataclass(frozen=True)
class PrometheusCheck:
    url: str = arg(doc="The Prometheus server, e.g. `http://prometheus:9090`.")
    query: str = arg(doc="A PromQL instant query returning one value (one series, or a scalar).")
    at_most: float | None = arg(None, doc="Success when the value is at most this (e.g. an error ratio).")
    at_least: float | None = arg(None, doc="Success when the value is at least this (e.g. a success ratio).")
    timeout: float = arg(5.0, doc="Seconds to wait for the answer.")


@dataclass(frozen=True)
class Analysis:
    http: HttpCheck | None = arg(None, doc="An HTTP check.")
    prometheus: PrometheusCheck | None = arg(None, doc="A Prometheus instant query with a threshold.")
    count: int = arg(3, doc="How many measurements of each check; every one must pass.")
    interval: float = arg(5.0, doc="Seconds between measurements (and, while watching, between checks).")


def check_analysis(analysis: Analysis | None, where: str) -> None:
    """The rules the checks' arguments must follow, as ArgErrors (certain: bad whatever runs first)."""
    if analysis is None:
        return
    if analysis.http is None and analysis.prometheus is None:
        raise ArgError("'analysis' needs 'http' or 'prometheus' (or both)", path=where)
    if analysis.count < 1:
        raise ArgError(f"'analysis.count' must be at least 1 (got {analysis.count})", path=where)
    if analysis.interval <= 0:
        raise ArgError(f"'analysis.interval' must be more than 0 (got {analysis.interval:g})", path=where)
    for check in (analysis.http, analysis.prometheus):
        if check is not None and urllib.parse.urlsplit(check.url).scheme not in ("http", "https"):
            raise ArgError(f"'{check.url}' must be an http(s) URL", path=where)
    prom = analysis.prometheus
    if prom is not None and prom.at_most is None and prom.at_least is None:
        raise ArgError("'analysis.prometheus' needs 'at_most' or 'at_least'", path=where)
    if analysis.http is not None and analysis.http.body is not None:
        try:
            re.compile(analysis.http.body)
        except re.error as exc:
            raise ArgError(f"'analysis.http.body' must be a regular expression ({exc})", path=where) from None


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout) as resp:
            return resp.status, resp.read(1 << 20)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(1 << 20) if exc.fp else b""


def measure_http(check: HttpCheck) -> str | None:
    """None when the check passes, else why it failed."""
    try:
        status, body = _get(check.url, check.timeout)
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"GET {check.url}: {SCRUBBER.scrub(str(reason))[:200]}"
    if status != check.status:
        return f"GET {check.url}: status {status} (expected {check.status})"
    if check.body is not None and not re.search(check.body, body.decode("utf-8", "replace")):
        return f"GET {check.url}: body does not match {check.body!r}"
    return None


def measure_prometheus(check: PrometheusCheck) -> tuple[float | None, str | None]:
    """(value, None) when the query passes, (value or None, why) when it does not."""
    url = check.url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": check.query})
    try:
        status, raw = _get(url, check.timeout)
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        return None, f"prometheus {check.url}: {SCRUBBER.scrub(str(getattr(exc, 'reason', exc)))[:200]}"
    try:
        doc = jsonable.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return None, f"prometheus {check.url}: status {status}, not a Prometheus API answer"
    if status != 200 or doc.get("status") != "success":
        return None, f"prometheus query {check.query!r}: {doc.get('error') or f'status {status}'}"
    data = doc.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar" and isinstance(result, list) and len(result) == 2:
        samples = [result[1]]
    elif data.get("resultType") == "vector" and isinstance(result, list):
        samples = [r.get("value", [None, None])[1] for r in result]
    else:
        return None, f"prometheus query {check.query!r}: a {data.get('resultType')} is not one value"
    if not samples:
        return None, f"prometheus query {check.query!r}: no data"
    if len(samples) > 1:
        return None, f"prometheus query {check.query!r}: {len(samples)} series, expected one"
    try:
        value = float(samples[0])
    except (TypeError, ValueError):
        return None, f"prometheus query {check.query!r}: not a number ({samples[0]!r})"
    if value != value:  # NaN: a ratio over no requests
        return None, f"prometheus query {check.query!r}: no data (NaN)"
    if check.at_most is not None and value > check.at_most:
        return value, f"prometheus query {check.query!r} = {value:g}, above {check.at_most:g}"
    if check.at_least is not None and value < check.at_least:
        return value, f"prometheus query {check.query!r} = {value:g}, below {check.at_least:g}"
    return value, None


def measure(analysis: Analysis) -> str | None:
    """One measurement of every check: None when all pass, else the first failure."""
    if analysis.http is not None:
        failed = measure_http(analysis.http)
        if failed:
            return failed
    if analysis.prometheus is not None:
        return measure_prometheus(analysis.prometheus)[1]
    return None


def run_analysis(
    analysis: Analysis,
    emit: Callable[[str], None],
    remaining: Callable[[], float | None] = lambda: None,
    count: int | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> str | None:
    """Measure `count` (default: the analysis's) times, `interval` apart; None when every one
    passed, else the first failure with its number. `stop` ends it early (a watch window over)."""
    total = analysis.count if count is None else count
    for i in range(total):
        if i:
            left = remaining()
            if left is not None and left < analysis.interval:
                return f"measurement {i + 1}/{total}: the step's timeout would pass first"
            time.sleep(analysis.interval)
            if stop():
                return None
        failed = measure(analysis)
        if failed:
            return f"measurement {i + 1}/{total} failed: {failed}"
        emit(f"canary: measurement {i + 1}/{total} passed")
    return None
