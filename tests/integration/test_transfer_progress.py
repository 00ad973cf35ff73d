"""Progress of long transfers (issue 18, item 2), through the real `playbook` command with
`--format jsonl`: an rsync to the real sshd fleet, an S3 download from moto's server and an npm
tarball from Verdaccio each emit `progress` events (bytes done of the total), at most one a
second per host, spaced by the meter's own clock (`at`), never by wall-clock waits here."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import uuid
from pathlib import Path

import boto3
import pytest
import yaml

from engine.cli import main


def jsonl(capsys, *args: str) -> tuple[int, list[dict]]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in out + err, err
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def progress(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "progress"]


def assert_rate_limited(events: list[dict]) -> None:
    by_host: dict[str | None, list[dict]] = {}
    for e in events:
        by_host.setdefault(e["host"], []).append(e)
    for host, evs in by_host.items():
        ats = [e["at"] for e in evs]
        assert all(b - a >= 0.999 for a, b in zip(ats, ats[1:])), (host, ats)  # rounded to ms


@pytest.mark.fleet
def test_an_rsync_transfer_reports_growing_bytes_at_most_once_a_second_per_host(
    fleet_factory, tmp_path, capsys, monkeypatch
):
    fleet = fleet_factory(2)
    src = tmp_path / "src"
    src.mkdir()
    size = 12 << 20
    (src / "big.bin").write_bytes(os.urandom(size))
    (src / "small.txt").write_text("hello\n")
    # the real rsync, held to 4 MB/s so that one transfer outlasts a few meter intervals
    wrapper = tmp_path / "bin"
    wrapper.mkdir()
    real = shutil.which("rsync")
    assert real
    (wrapper / "rsync").write_text(f'#!/bin/sh\nexec {real} --bwlimit=4000 "$@"\n')
    (wrapper / "rsync").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper}:{os.environ['PATH']}")
    inv = fleet.write_inventory(tmp_path / "inv.yml")
    pb = tmp_path / "pb.yml"
    pb.write_text(
        yaml.safe_dump(
            {
                "name": "big",
                "fleets": {"web": {"hosts": "all"}},
                "steps": [
                    {
                        "id": "sync",
                        "module": "rsync",
                        "fleet": "web",
                        "args": {"src": str(src), "dest": "{{ root }}/big"},
                    }
                ],
            }
        )
    )
    base = ["-i", str(inv), "--state-dir", str(tmp_path / "state"), "--format", "jsonl"]
    code, events = jsonl(capsys, "run", str(pb), *base)
    assert code == 0
    seen = progress(events)
    for host in fleet.names:
        mine = [e for e in seen if e["host"] == host]
        assert len(mine) >= 2, (host, seen)
        assert all(e["step"] == "sync" and e["what"] == "transfer" and e["total"] >= size for e in mine)
        done = [e["done"] for e in mine]
        assert done == sorted(done) and done[-1] > done[0] > 0, done
        assert all(e["rate"] and e["rate"] > 0 for e in mine[1:])
        assert any(e["eta"] is not None for e in mine)
    assert_rate_limited(seen)
    for h in fleet:
        assert (Path(h.data_dir) / "big" / "big.bin").stat().st_size == size

    code, events = jsonl(capsys, "run", str(pb), *base)  # in sync: no rsync, no progress
    assert code == 0 and progress(events) == []


def test_an_s3_download_reports_progress(moto_s3, tmp_path, capsys):
    client = boto3.client("s3", endpoint_url=moto_s3)
    bucket = f"big-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    data = os.urandom(3 << 20)
    client.put_object(Bucket=bucket, Key="blob.bin", Body=data, ChecksumAlgorithm="SHA256")
    source = {"type": "s3", "bucket": bucket, "key": "blob.bin", "endpoint_url": moto_s3, "extract": "none"}
    events = plan_source(tmp_path, capsys, source)
    assert events and events[0]["step"] == "sources.blob" and events[0]["what"] == "download"
    assert events[0]["host"] is None and events[0]["total"] == len(data) and 0 < events[0]["done"] <= len(data)
    assert_rate_limited(events)


def test_an_npm_tarball_download_reports_progress(verdaccio, tmp_path, capsys):
    name = f"@seed/big-{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "package.json").write_text(json.dumps({"name": name, "version": "1.0.0", "files": ["blob.bin"]}))
    (pkg / "blob.bin").write_bytes(os.urandom(1 << 20))
    verdaccio.publish(pkg)
    npmrc = verdaccio.npmrc(tmp_path / ".npmrc")
    source = {"type": "npm", "package": name, "version": "1.0.0", "npmrc": str(npmrc)}
    events = plan_source(tmp_path, capsys, source)
    assert events and events[0]["step"] == "sources.blob" and events[0]["what"] == "download"
    tarball = next((tmp_path / "state" / "cache").rglob("blob"))
    assert tarfile.is_tarfile(tarball) and events[0]["total"] == tarball.stat().st_size
    assert_rate_limited(events)


def plan_source(tmp_path: Path, capsys, source: dict) -> list[dict]:
    pb = tmp_path / "pb.yml"
    pb.write_text(
        yaml.safe_dump(
            {
                "name": "fetch",
                "sources": {"blob": source},
                "steps": [
                    {
                        "id": "show",
                        "module": "command",
                        "fleet": "controller",
                        "args": {"argv": ["echo", "{{ sources.blob.digest }}"]},
                    }
                ],
            }
        )
    )
    inv = tmp_path / "inv.yml"
    inv.write_text(yaml.safe_dump({"hosts": {"h1": {"connection": "local"}}}))
    code, events = jsonl(
        capsys, "plan", str(pb), "-i", str(inv), "--state-dir", str(tmp_path / "state"), "--format", "jsonl"
    )
    assert code in (0, 2), events
    return progress(events)
