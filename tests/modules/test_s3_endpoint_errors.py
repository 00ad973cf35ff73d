"""s3_fetch's endpoint failures, each said plainly (issue 15 item 5): a hanging endpoint (a real
loopback socket that accepts and never answers) times out, an endpoint URL without a scheme is
an argument error, and moto's real S3 server tells a missing bucket from a missing object."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import boto3
import pytest

from engine.errors import ArgError, ModuleError
from modules.s3_fetch import S3Fetch
from tests.harness.moto import FAKE_SECRET_KEY
from tests.modules.test_artifact_reverify import ctx
from tests.modules.test_s3_fetch import args, put, tarball


@pytest.fixture
def s3(moto_s3):
    client = boto3.client("s3", endpoint_url=moto_s3)
    bucket = f"endpoint-{os.urandom(6).hex()}"
    client.create_bucket(Bucket=bucket)
    return client, bucket, moto_s3


class SilentServer:
    """Accepts every connection on 127.0.0.1 and never answers; counts what it accepted."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.accepted:
            c.close()


def test_a_hanging_endpoint_times_out_with_a_clear_error(moto_s3, tmp_path):
    server = SilentServer()
    outcome: list[BaseException | None] = []

    def plan() -> None:
        try:
            S3Fetch().plan(ctx(tmp_path), args("widgets", server.endpoint, timeout=1))
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=plan, daemon=True)
    worker.start()
    worker.join(120)  # a harness bound: the endpoint must not hang the step
    server.close()
    assert not worker.is_alive(), "s3_fetch still waiting on an endpoint that never answers"
    [exc] = outcome
    assert isinstance(exc, ModuleError), exc
    text = str(exc)
    assert "did not answer within 1 s" in text and server.endpoint in text and "s3://widgets/w.tar.gz" in text
    assert server.accepted  # it did connect: this is the read timeout, not a refused connection
    assert FAKE_SECRET_KEY not in text


@pytest.mark.parametrize("endpoint", ["127.0.0.1:9000", "minio.internal", "ftp://127.0.0.1:9000"])
def test_an_endpoint_url_without_a_scheme_is_an_argument_error(moto_s3, tmp_path, endpoint):
    with pytest.raises(ArgError) as err:
        S3Fetch().plan(ctx(tmp_path), args("widgets", endpoint))
    assert "'endpoint_url' must be an http:// or https:// URL" in str(err.value) and repr(endpoint) in str(err.value)


def test_no_such_bucket_is_not_no_such_object(s3, tmp_path):
    client, bucket, endpoint = s3
    put(client, bucket, "w.tar.gz", tarball({"a": b"a"}))
    with pytest.raises(ModuleError) as err:
        S3Fetch().plan(ctx(tmp_path), args(f"{bucket}-gone", endpoint))
    assert f"s3://{bucket}-gone/w.tar.gz: no such bucket '{bucket}-gone'" in str(err.value)
    with pytest.raises(ModuleError) as err:
        S3Fetch().plan(ctx(tmp_path), args(bucket, endpoint, key="nope.tar.gz"))
    assert f"s3://{bucket}/nope.tar.gz: no such object" in str(err.value) and "no such bucket" not in str(err.value)
    assert not Path(tmp_path / "cache" / "sha256").exists()
