"""A host key refused on the rsync path (rsync's own OpenSSH, against the real sshd fleet) says
which key was offered, with its fingerprint, as the engine's paramiko path does (issue 15 item 7)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import paramiko
import pytest

import modules._support.rsync_batch as batching
import modules._support.rsync_transfer as transfer
from engine.connection.base import ReadOnly
from engine.connection.pool import ConnectionPool
from engine.errors import HostKeyError
from engine.module import ApplyContext, PlanContext, get_module
from modules.rsync import RsyncArgs

pytestmark = pytest.mark.fleet


def refused(sshd_fleet, tmp_path: Path, known_hosts: Path) -> HostKeyError:
    src = tmp_path / "src"
    src.mkdir()
    (src / "index.php").write_text("<?php\n")
    good = sshd_fleet.model_hosts()[0]
    stranger = dataclasses.replace(good, known_hosts=str(known_hosts))
    module = get_module("rsync")
    common = dict(
        host=good.name,
        step="sync",
        vars={},
        run_id=f"hk{time.time_ns()}",
        release_id="r1",
        state_dir=str(tmp_path),
        target=stranger,
        mode="run",
    )
    with ConnectionPool(connect_timeout=5) as pool:
        conn = pool.get(good)  # the engine's connection is fine; only rsync's ssh sees the other file
        args = RsyncArgs(src=str(src), dest=str(sshd_fleet[0].data_dir / f"hk-{tmp_path.name}"))
        plan = module.plan(PlanContext(conn=ReadOnly(conn), **common), args)
        with pytest.raises(HostKeyError) as info:
            module.apply(ApplyContext(conn=conn, **common), plan)
    return info.value


@pytest.fixture(autouse=True)
def over_the_relay_limit(monkeypatch):
    monkeypatch.setattr(transfer, "RELAY_MAX_BYTES", -1)  # rsync starts its own OpenSSH
    monkeypatch.setattr(batching, "BATCH_MAX_BYTES", 0)  # and no batch over the engine's connection


def test_unknown_host_key_on_the_rsync_path_names_its_fingerprint(sshd_fleet, tmp_path):
    kh = sshd_fleet.write_known_hosts(tmp_path / "kh", only=[1, 2])
    fp = paramiko.Ed25519Key(filename=str(sshd_fleet[0].host_key)).fingerprint
    err = refused(sshd_fleet, tmp_path, kh)
    assert err.fingerprint == fp and err.host == "host01"
    assert f"unknown host key ssh-ed25519 {fp} not in {kh}" in str(err)
    assert "verify it out of band" in str(err)


def test_changed_host_key_on_the_rsync_path_names_its_fingerprint(sshd_fleet, tmp_path):
    h0, h1 = sshd_fleet[0], sshd_fleet[1]
    kh = tmp_path / "kh"
    kh.write_text(f"{h0.known_hosts_name} {' '.join(h1.host_key_pub.split()[:2])}\n")
    offered = paramiko.Ed25519Key(filename=str(h0.host_key)).fingerprint
    err = refused(sshd_fleet, tmp_path, kh)
    assert err.fingerprint == offered
    assert f"host key CHANGED: offered ssh-ed25519 {offered}" in str(err) and str(kh) in str(err)
