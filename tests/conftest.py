"""Session fixtures for the real sshd fleet (see tests/harness/sshd.py)."""

from __future__ import annotations

import os

import pytest

from tests.harness.sshd import SSHD, SshdFleet


@pytest.fixture(scope="session", autouse=True)
def _private_lock_dir(tmp_path_factory):
    """Deploy locks of this test session live in its own directory, not /tmp/playbook-locks:
    the fleet's hosts share this machine's /tmp with any other run (a benchmark, another suite)."""
    old = os.environ.get("PLAYBOOK_LOCK_DIR")
    os.environ["PLAYBOOK_LOCK_DIR"] = str(tmp_path_factory.mktemp("locks"))
    yield
    if old is None:
        os.environ.pop("PLAYBOOK_LOCK_DIR", None)
    else:
        os.environ["PLAYBOOK_LOCK_DIR"] = old


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
