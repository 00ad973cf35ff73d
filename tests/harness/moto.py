"""A real AWS API server on loopback for tests: moto in server mode, any service.

`MotoServer` runs moto's WSGI app (`ThreadedMotoServer`) in a thread of the test process on
127.0.0.1 and an ephemeral port; boto3 reaches it through `endpoint_url`. Every service moto
implements is served on the same endpoint (S3, EC2, ...). Because the server lives in this
process, tests can also reach its backends (`backend("s3")`) to change state behind the API's
back, e.g. swap an object's bytes without updating its checksum.

`fake_aws_env()` gives the environment boto3 needs to talk to it and nothing else: fake keys,
config and credentials files that are empty (no user profile leaks in), and the instance
metadata service disabled (boto3 must never try 169.254.169.254 from a test).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["MotoServer", "fake_aws_env", "FAKE_ACCESS_KEY", "FAKE_SECRET_KEY", "ACCOUNT_ID"]

FAKE_ACCESS_KEY = "AKIAPLAYBOOKTESTKEY01"
FAKE_SECRET_KEY = "playbook-test-secret-key-0123456789abcdef"
ACCOUNT_ID = "123456789012"  # moto's default account


def _free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


class MotoServer:
    """moto's server on 127.0.0.1:<free port>. Use as a context manager or `start()`/`stop()`."""

    def __init__(self, address: str = "127.0.0.1", port: int | None = None) -> None:
        if not address.startswith("127."):
            raise ValueError(f"'address' must be a loopback address (got {address!r})")
        self.address = address
        self.port = port or _free_port(address)
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}:{self.port}"

    def start(self) -> MotoServer:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address=self.address, port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def backend(service: str, region: str = "us-east-1", account: str = ACCOUNT_ID) -> Any:
        """moto's in-memory backend of a service (S3 is global: any region gives the same)."""
        import importlib

        models = importlib.import_module(f"moto.{service}.models")
        backends = getattr(models, f"{service}_backends")
        per_account = backends[account]
        if service == "s3":
            return per_account["aws"]
        return per_account[region]

    def reset(self) -> None:
        """Forget every resource of every service (moto's own reset endpoint)."""
        import urllib.request

        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()


@contextmanager
def fake_aws_env(
    directory: str | os.PathLike[str] | None = None, region: str = "us-east-1"
) -> Iterator[dict[str, str]]:
    """Set (and afterwards restore) the environment so boto3 uses fake keys and nothing else."""
    tmp = None
    if directory is None:
        tmp = tempfile.TemporaryDirectory(prefix="fake-aws-")
        directory = tmp.name
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config").write_text("")
    (d / "credentials").write_text("")
    env = {
        "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY,
        "AWS_CONFIG_FILE": str(d / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(d / "credentials"),
        "AWS_DEFAULT_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    cleared = (
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    )
    old = {k: os.environ.get(k) for k in list(env) + list(cleared)}
    os.environ.update(env)
    for k in cleared:
        os.environ.pop(k, None)
    try:
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if tmp is not None:
            tmp.cleanup()
