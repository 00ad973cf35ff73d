"""Extraction has a size budget, and a full disk is said as such (issue 15 item 5), for archives
fetched from moto's real S3 server. The full disk is a real small tmpfs (root) or, without the
right to mount, a real RLIMIT_FSIZE."""

from __future__ import annotations

import io
import os
import resource
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from engine.errors import ModuleError
from modules._support.extract import ExtractError
from modules.s3_fetch import S3Fetch
from tests.modules.test_artifact_reverify import ctx
from tests.modules.test_s3_fetch import args, put

MiB = 1 << 20


@pytest.fixture
def s3(moto_s3):
    client = boto3.client("s3", endpoint_url=moto_s3)
    bucket = f"limits-{os.urandom(6).hex()}"
    client.create_bucket(Bucket=bucket)
    return client, bucket, moto_s3


def zeros_tarball(size: int, name: str = "big.bin") -> bytes:
    """A gzip tarball with one entry of `size` zero bytes, built without holding them in memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tf:
        info = tarfile.TarInfo(name)
        info.size = size
        tf.addfile(info, _Zeros(size))
    return buf.getvalue()


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def test_a_small_archive_expanding_to_a_gibibyte_is_refused_by_the_budget(s3, tmp_path):
    client, bucket, endpoint = s3
    bomb = zeros_tarball(1 << 30)
    assert len(bomb) < 8 * MiB
    put(client, bucket, "w.tar.gz", bomb)
    with pytest.raises(ExtractError) as err:
        S3Fetch().plan(ctx(tmp_path), args(bucket, endpoint))
    text = str(err.value)
    assert f"s3://{bucket}/w.tar.gz" in text and "extraction budget" in text and "max_unpacked_mib" in text
    entry = next((tmp_path / "cache" / "sha256").iterdir())
    assert sorted(os.listdir(entry)) == ["blob"]  # nothing half-extracted left behind
    # the owner of a genuinely large archive raises the budget for that source
    plan = S3Fetch().plan(ctx(tmp_path), args(bucket, endpoint, max_unpacked_mib=1100))
    assert (Path(plan.outputs["path"]) / "big.bin").stat().st_size == 1 << 30


@pytest.fixture
def small_disk() -> Iterator[tuple[Path, str]]:
    """A 4 MiB filesystem (tmpfs), or without the right to mount, a 4 MiB RLIMIT_FSIZE."""
    d = Path(tempfile.mkdtemp(prefix="small-disk-"))
    if os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d)]).returncode == 0:
        try:
            yield d, "no space left on device"
        finally:
            subprocess.run(["umount", "-l", str(d)], check=True)
            d.rmdir()
        return
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 * MiB, old[1]))
    try:
        yield d, "file size limit"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)


def test_disk_full_while_extracting_says_no_space_left(s3, small_disk):
    client, bucket, endpoint = s3
    state, said = small_disk
    put(client, bucket, "w.tar.gz", zeros_tarball(16 * MiB))
    with pytest.raises(ModuleError) as err:
        S3Fetch().plan(ctx(state), args(bucket, endpoint))
    text = str(err.value)
    assert said in text and f"s3://{bucket}/w.tar.gz" in text
    assert "corrupt" not in text and "internal error" not in text
    entry = next((state / "cache" / "sha256").iterdir())
    assert sorted(os.listdir(entry)) == ["blob"]


def test_disk_full_while_downloading_says_no_space_left(s3, small_disk):
    client, bucket, endpoint = s3
    state, said = small_disk
    noise = zlib.compress(os.urandom(1))  # any bytes: they never fit
    put(client, bucket, "w.tar.gz", noise + os.urandom(6 * MiB))
    with pytest.raises(ModuleError) as err:
        S3Fetch().plan(ctx(state), args(bucket, endpoint))
    text = str(err.value)
    assert said in text and f"s3://{bucket}/w.tar.gz" in text and "artifact cache" in text
    assert os.listdir(state / "cache" / "tmp") == []  # the partial download is removed
