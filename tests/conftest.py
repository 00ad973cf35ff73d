"""Session fixtures for the real sshd fleet (see tests/harness/sshd.py)."""

from __future__ import annotations

import contextlib
import os

import pytest

from tests.harness.sshd import SSHD, SshdFleet


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@pytest.fixture(scope="session", autouse=True)
def _private_dirs(tmp_path_factory):
    """Deploy locks of this test session live in its own directory, not /tmp/playbook-locks:
    the fleet's hosts share this machine's /tmp with any other run (a benchmark, another
    suite). So do its clean-validation markers (engine/load/validcache.py), not ~/.cache/playbook."""
    with (
        _env("PLAYBOOK_LOCK_DIR", str(tmp_path_factory.mktemp("locks"))),
        _env("PLAYBOOK_CACHE_DIR", str(tmp_path_factory.mktemp("cache"))),
    ):
        yield


def _require_sshd() -> None:
    if os.path.exists(SSHD):
        return
    if os.environ.get("CI"):
        pytest.fail(f"{SSHD} is missing and CI is set: the fleet tests must run in CI (install openssh-server)")
    pytest.skip(f"{SSHD} not installed (apt-get install openssh-server); fleet tests skipped")


@pytest.fixture(scope="session")
def sshd_fleet(tmp_path_factory):
    """Three real sshd hosts (host01..host03) on 127.0.0.10-12, shared by the whole session."""
    _require_sshd()
    with SshdFleet(3, tmp_path_factory.mktemp("fleet")) as fleet:
        yield fleet


@pytest.fixture
def fleet_factory(tmp_path_factory):
    """Start extra fleets: `fleet_factory(n)`; each is stopped when the test ends."""
    _require_sshd()
    started: list[SshdFleet] = []

    def make(n: int, **kwargs) -> SshdFleet:
        fleet = SshdFleet(n, tmp_path_factory.mktemp("fleet-extra"), **kwargs).start()
        started.append(fleet)
        return fleet

    yield make
    for fleet in started:
        fleet.stop()


# -- S3 (moto server mode) and npm (Verdaccio) on loopback, for s3_fetch / npm_fetch -------------


@pytest.fixture(scope="session")
def moto_server_session():
    """moto's server (every AWS service it implements) on 127.0.0.1:<free port>, once per session."""
    from tests.harness.moto import MotoServer

    with MotoServer() as server:
        yield server


@pytest.fixture
def moto_s3(moto_server_session, tmp_path):
    """The S3 endpoint URL of the session's moto server. For the test's duration boto3 sees fake
    keys and empty config/credentials files (no user profile, no instance role); restored after."""
    from tests.harness.moto import fake_aws_env

    with fake_aws_env(tmp_path / "aws"):
        yield moto_server_session.endpoint


@pytest.fixture(scope="session")
def verdaccio(tmp_path_factory):
    """A real npm registry (Verdaccio 6.8.0) on 127.0.0.1:<free port>, storage in a temp dir.
    Installed by .ci/install-verdaccio.sh; skipped when missing unless CI is set."""
    from tests.harness.verdaccio import Verdaccio, require_verdaccio

    binary = require_verdaccio()
    with Verdaccio(binary, tmp_path_factory.mktemp("verdaccio")) as registry:
        yield registry


# -- a real Kubernetes control plane (tests/harness/kube.py; binaries from .ci/build-kube.sh) ------


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory):
    """etcd + kube-apiserver + kube-controller-manager v1.20.2 and a fake kubelet on 127.0.0.1,
    shared by the session. Skips (fails when CI is set) if the binaries are not built."""
    from tests.harness.kube import KubeCluster, missing_binaries

    missing = missing_binaries()
    if missing:
        why = f"Kubernetes binaries missing ({', '.join(missing)}): run `bash .ci/build-kube.sh`"
        if os.environ.get("CI"):
            pytest.fail(why + " (CI is set: the canary tests must run in CI)")
        pytest.skip(why)
    with KubeCluster(tmp_path_factory.mktemp("kube")) as cluster:
        yield cluster
