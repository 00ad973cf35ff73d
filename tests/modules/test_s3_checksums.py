"""Multipart objects with composite SHA-256 checksums, on moto's real S3 server (issue 15 item
5): moto's HeadObject gives the composite checksum without its `-N` suffix and without a
ChecksumType, as some S3-compatible servers do, so only the checksum type tells it apart."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import boto3
import pytest

from engine.cli import main
from modules.s3_fetch import S3Fetch
from tests.modules.test_artifact_reverify import ctx
from tests.modules.test_s3_fetch import args, sha

MiB = 1 << 20


@pytest.fixture
def s3(moto_s3):
    client = boto3.client("s3", endpoint_url=moto_s3)
    bucket = f"multipart-{os.urandom(6).hex()}"
    client.create_bucket(Bucket=bucket)
    return client, bucket, moto_s3


def multipart(client, bucket: str, key: str, parts: list[bytes]) -> bytes:
    up = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")
    done = []
    for n, data in enumerate(parts, 1):
        r = client.upload_part(
            Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=n, Body=data, ChecksumAlgorithm="SHA256"
        )
        done.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumSHA256": r["ChecksumSHA256"]})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"], MultipartUpload={"Parts": done})
    attrs = client.get_object_attributes(Bucket=bucket, Key=key, ObjectAttributes=["Checksum"])
    assert attrs["Checksum"]["ChecksumType"] == "COMPOSITE"
    return b"".join(parts)


def test_a_correct_pin_on_a_composite_checksum_is_no_mismatch(s3, tmp_path):
    client, bucket, endpoint = s3
    data = multipart(client, bucket, "bundle.bin", [os.urandom(5 * MiB), b"tail"])
    c = ctx(tmp_path)
    plan = S3Fetch().plan(c, args(bucket, endpoint, key="bundle.bin", sha256=sha(data)))
    assert plan.outputs["digest"] == sha(data)
    assert hashlib.sha256(Path(plan.outputs["path"]).read_bytes()).hexdigest() == sha(data)[7:]
    assert c.warnings == []


def test_an_unpinned_composite_checksum_warns_unverified(s3, tmp_path):
    client, bucket, endpoint = s3
    data = multipart(client, bucket, "bundle.bin", [os.urandom(5 * MiB), b"tail"])
    c = ctx(tmp_path)
    plan = S3Fetch().plan(c, args(bucket, endpoint, key="bundle.bin"))
    assert plan.outputs["digest"] == sha(data)
    [warning] = c.warnings
    assert "unverified" in warning and "composite multipart ChecksumSHA256" in warning and "pin 'sha256'" in warning


def test_the_unverified_warning_is_shown_without_verbose(s3, tmp_path, capsys):
    client, bucket, endpoint = s3
    client.put_object(Bucket=bucket, Key="config.json", Body=b"{}")  # no checksum asked for
    (tmp_path / "inv.yml").write_text("hosts:\n  web01:\n    address: 127.0.0.1\n")
    (tmp_path / "p.yml").write_text(
        "name: unverified\n"
        "sources:\n"
        "  conf:\n"
        "    type: s3\n"
        f"    bucket: {bucket}\n"
        "    key: config.json\n"
        f"    endpoint_url: {endpoint}\n"
        "steps: []\n"
    )
    code = main(["plan", str(tmp_path / "p.yml"), "-i", str(tmp_path / "inv.yml"), "--state-dir", str(tmp_path / "s")])
    out, err = capsys.readouterr()
    assert code == 2, out + err  # will change: a first deploy
    text = " ".join((out + err).split())  # however the console wraps it
    assert "warning: [sources.conf]" in text
    assert "unverified: no sha256 pinned and the object has no ChecksumSHA256" in text
