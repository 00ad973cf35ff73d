"""The shared state backend's storage: an S3 bucket and prefix, written with conditional requests.

Everything the `s3` state backend keeps (locks, the history index, run journals, the failure
budget) is an object under `s3://<bucket>/<prefix>/`, and every write that must not lose a race
is conditional: `If-None-Match: *` creates only if absent, `If-Match: <etag>` replaces (or
deletes) only the version that was read. A lost race is HTTP 412, raised as `Precondition`;
the callers re-read and retry (compare-and-swap).

Credentials come from boto3's standard chain (environment, shared files, instance or container
roles). The endpoint is `endpoint_url=` in the state URL, else `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL` (boto3 reads those itself), else AWS.

Some S3-compatible stores accept the conditional headers and ignore them, which would make
every lock succeed. `S3Store.self_test` (run once per store and process before the first lock
or CAS) writes a probe key twice with `If-None-Match: *` and refuses the store unless the second
write is answered 412. `requests`, `seconds` and `by_kind` count the requests made and the time they took, for the
benchmarks; with `$PLAYBOOK_STATE_STATS` set to a file, each process appends them there as one
JSON line when it exits.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from engine.errors import PlaybookError
from engine.model import jsonable

__all__ = ["StateError", "Precondition", "StateUrl", "parse_state_url", "S3Store", "backoff"]


class StateError(PlaybookError, RuntimeError):
    """The shared state backend is misconfigured, unreachable, or does not honour conditional writes."""


def backoff(attempt: int) -> None:
    """After a lost compare-and-swap (the `attempt`-th, from 0): wait a random moment, up to
    50 ms × 2^attempt and at most 1 s ("full jitter"), so the losers of one race do not read and
    collide again all at once."""
    time.sleep(random.uniform(0, min(1.0, 0.05 * 2**attempt)))


class Precondition(StateError):
    """A conditional write lost its race (HTTP 412): the object exists, or changed since it was read."""


@dataclass(frozen=True)
class StateUrl:
    """`s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&region=eu-west-1`."""

    bucket: str
    prefix: str
    endpoint_url: str | None = None
    region: str | None = None

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def parse_state_url(text: str, *, what: str = "--state") -> StateUrl:
    parts = urlsplit(text)
    if parts.scheme != "s3" or not parts.netloc:
        raise StateError(f"{what} must be an s3://bucket/prefix URL (got {text!r}); omit it for the local state")
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"endpoint_url", "region"})
    if unknown:
        raise StateError(f"{what}: unknown parameter {unknown[0]!r} (expected endpoint_url or region)")
    endpoint, region = query.get("endpoint_url", []), query.get("region", [])
    return StateUrl(
        parts.netloc, parts.path.strip("/"), endpoint[0] if endpoint else None, region[0] if region else None
    )


_TESTED: set[tuple[str | None, str, str]] = set()
_TEST_LOCK = threading.Lock()


class S3Store:
    """Conditional get/put/delete of JSON objects under one bucket and prefix."""

    def __init__(self, url: StateUrl) -> None:
        import boto3
        from botocore.config import Config

        self.url = url
        self.requests = 0  # requests made, the seconds they took, and per kind of object (benchmarks)
        self.seconds = 0.0
        self.by_kind: dict[str, int] = {}
        kw: dict[str, Any] = {"config": Config(retries={"max_attempts": 5, "mode": "standard"})}
        if url.endpoint_url:
            kw["endpoint_url"] = url.endpoint_url
        if url.region:
            kw["region_name"] = url.region
        self._s3 = boto3.client("s3", **kw)
        self._count = threading.Lock()

    def key(self, name: str) -> str:
        return f"{self.url.prefix}/{name}" if self.url.prefix else name

    def where(self, name: str) -> str:
        return f"s3://{self.url.bucket}/{self.key(name)}"

    def _tally(self, name: str, started: float) -> None:
        kind = name.split("/", 1)[0] if not name.startswith("history/runs/") else "journal"
        if name == "history/index.json":
            kind = "index"
        if name.endswith((".budget.json", ".sources.json")):
            kind = name.rsplit(".", 2)[-2]
        with self._count:
            self.requests += 1
            self.seconds += time.perf_counter() - started
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def _call(self, op: str, name: str, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        started = time.perf_counter()
        try:
            return getattr(self._s3, op)(Bucket=self.url.bucket, Key=self.key(name), **kw)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise Precondition(f"{self.where(name)}: changed concurrently ({code or status})") from None
            if status == 404 or code in ("NoSuchKey", "404", "NotFound"):
                raise KeyError(name) from None
            raise StateError(
                f"state backend {self.where(name)}: {op} failed: {code or status}: {err.get('Message', '')}"
            ) from None
        except BotoCoreError as exc:
            raise StateError(f"state backend {self.where(name)}: {op} failed: {exc}") from None
        finally:
            self._tally(name, started)

    def get(self, name: str) -> tuple[Any, str] | None:
        """(the decoded JSON, its ETag), or None when the object does not exist."""
        try:
            resp = self._call("get_object", name)
        except KeyError:
            return None
        body = resp["Body"].read()
        try:
            return jsonable.loads(body), str(resp["ETag"])
        except ValueError:
            raise StateError(
                f"state backend {self.where(name)}: not JSON (damaged, or not written by playbook)"
            ) from None

    def get_bytes(self, name: str) -> bytes | None:
        try:
            return bytes(self._call("get_object", name)["Body"].read())
        except KeyError:
            return None

    def put(self, name: str, value: Any, *, if_match: str | None = None, if_absent: bool = False) -> str:
        """Write `value` as JSON; returns the new ETag. `if_absent`: only create; `if_match`:
        only replace that version. A lost condition raises `Precondition`."""
        body = value if isinstance(value, bytes) else (json.dumps(value, sort_keys=True) + "\n").encode()
        kw: dict[str, Any] = {"Body": body, "ContentType": "application/json"}
        if if_absent:
            kw["IfNoneMatch"] = "*"
        if if_match is not None:
            kw["IfMatch"] = if_match
        return str(self._call("put_object", name, **kw)["ETag"])

    def delete(self, name: str, *, if_match: str | None = None) -> None:
        kw: dict[str, Any] = {"IfMatch": if_match} if if_match is not None else {}
        try:
            self._call("delete_object", name, **kw)
        except KeyError:
            pass

    def list(self, prefix: str) -> list[str]:
        """Names (relative to the store's prefix) of the objects under `prefix`."""
        from botocore.exceptions import BotoCoreError, ClientError

        out: list[str] = []
        token: dict[str, Any] = {}
        base = self.key("")
        while True:
            started = time.perf_counter()
            try:
                resp = self._s3.list_objects_v2(Bucket=self.url.bucket, Prefix=self.key(prefix), **token)
            except (ClientError, BotoCoreError) as exc:
                raise StateError(f"state backend {self.where(prefix)}: list failed: {exc}") from None
            finally:
                self._tally("list", started)
            out += [o["Key"][len(base) :] for o in resp.get("Contents", [])]
            if not resp.get("IsTruncated"):
                return out
            token = {"ContinuationToken": resp["NextContinuationToken"]}

    def self_test(self) -> None:
        """Refuse a store that ignores `If-None-Match` (once per store per process)."""
        ident = (self.url.endpoint_url, self.url.bucket, self.url.prefix)
        with _TEST_LOCK:
            if ident in _TESTED:
                return
            probe = f"probe/{uuid.uuid4().hex}"
            self.put(probe, {"probe": 1}, if_absent=True)
            try:
                self.put(probe, {"probe": 2}, if_absent=True)
            except Precondition:
                _TESTED.add(ident)
                return
            finally:
                self.delete(probe)
            raise StateError(
                f"state backend {self.url}: refused: a second conditional write (If-None-Match: *) to an "
                f"existing key succeeded instead of answering 412. This store ignores conditional writes, "
                f"so two runs could both take a deploy lock; use a store that implements them "
                f"(AWS S3, MinIO, Ceph RGW recent releases)"
            )
