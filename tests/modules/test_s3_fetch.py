"""s3_fetch against moto's real S3 API server on loopback (driven by boto3)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import uuid
from pathlib import Path

import boto3
import pytest

from engine.errors import ArgError, ModuleError
from engine.model.events import RunFinished
from engine.model.results import Change, RunSummary, Status, StepResult
from engine.module import ApplyContext, PlanContext
from engine.record.deployed import ArtifactRecorder, history, last_deployed, record_deployed
from modules._support.extract import UnsafeEntry
from modules.s3_fetch import S3Fetch, S3FetchArgs
from tests.harness.moto import FAKE_SECRET_KEY, MotoServer


def tarball(files: dict[str, bytes], *, evil: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_600_000_000
            tf.addfile(info, io.BytesIO(data))
        if evil:
            info = tarfile.TarInfo("../../escaped.txt")
            info.size = 3
            tf.addfile(info, io.BytesIO(b"bad"))
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def s3(moto_s3):
    client = boto3.client("s3", endpoint_url=moto_s3)
    bucket = f"widgets-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket, moto_s3


def put(client, bucket: str, key: str, data: bytes, checksum: bool = True) -> dict:
    kw = {"ChecksumAlgorithm": "SHA256"} if checksum else {}
    return client.put_object(Bucket=bucket, Key=key, Body=data, **kw)


def ctx(state: Path, mode: str = "plan", step: str = "sources.widgets", cls=PlanContext):
    messages: list[str] = []
    warnings: list[str] = []
    c = cls(
        host=None,
        step=step,
        vars={"run": {"playbook": "deploy-widgets"}},
        run_id="r1",
        release_id="rel1",
        state_dir=str(state),
        mode=mode,
        emit=messages.append,
        warn=warnings.append,
    )
    c.messages, c.warnings = messages, warnings  # type: ignore[attr-defined]
    return c


def args(bucket: str, endpoint: str, key: str = "w.tar.gz", **kw) -> S3FetchArgs:
    return S3FetchArgs(bucket=bucket, key=key, endpoint_url=endpoint, **kw)


def test_plan_fetches_verified_and_extracts_then_no_change_once_deployed(s3, tmp_path):
    client, bucket, endpoint = s3
    data = tarball({"index.html": b"<h1>widgets 1</h1>", "js/app.js": b"app()"})
    put(client, bucket, "w.tar.gz", data)
    mod = S3Fetch()
    plan = mod.plan(ctx(tmp_path), args(bucket, endpoint))
    assert plan.change == Change.WILL_CHANGE
    assert plan.outputs["digest"] == sha(data)
    assert f"first deploy of {sha(data)}" in plan.reason
    tree = Path(plan.outputs["path"])
    assert tree == tmp_path / "cache" / "sha256" / hashlib.sha256(data).hexdigest() / "tree"
    assert (tree / "js/app.js").read_bytes() == b"app()"
    outputs = mod.apply(ctx(tmp_path, "run", cls=ApplyContext), plan)
    assert outputs["path"] == str(tree) and outputs["digest"] == sha(data)

    record_deployed(tmp_path, "deploy-widgets", "widgets", digest=sha(data), version=None, run_id="r1")
    again = mod.plan(ctx(tmp_path), args(bucket, endpoint))
    assert again.change == Change.NO_CHANGE and "already deployed" in again.reason
    assert again.outputs["path"] == str(tree)

    data2 = tarball({"index.html": b"<h1>widgets 2</h1>"})
    put(client, bucket, "w.tar.gz", data2)
    third = mod.plan(ctx(tmp_path), args(bucket, endpoint))
    assert third.change == Change.WILL_CHANGE
    assert f"{sha(data)} → {sha(data2)}" in third.reason
    assert third.diffs[0].before.startswith(sha(data)) and third.diffs[0].after.startswith(sha(data2))


def test_pinned_digest(s3, tmp_path):
    client, bucket, endpoint = s3
    data = tarball({"a": b"a"})
    put(client, bucket, "w.tar.gz", data, checksum=False)
    ok = S3Fetch().plan(ctx(tmp_path), args(bucket, endpoint, sha256=sha(data)))
    assert ok.outputs["digest"] == sha(data)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(ModuleError) as err:
        S3Fetch().plan(ctx(tmp_path / "other"), args(bucket, endpoint, sha256=wrong))
    assert wrong in str(err.value) and sha(data) in str(err.value) and f"s3://{bucket}/w.tar.gz" in str(err.value)
    assert not (tmp_path / "other" / "cache" / "sha256" / hashlib.sha256(data).hexdigest()).exists()
    # pin and object checksum disagree: refused before downloading
    put(client, bucket, "c.tar.gz", data)
    with pytest.raises(ModuleError, match="pins sha256:0+, but the object's ChecksumSHA256 is " + sha(data)):
        S3Fetch().plan(ctx(tmp_path), args(bucket, endpoint, key="c.tar.gz", sha256=wrong))
    with pytest.raises(ArgError, match="'sha256' must be"):
        S3Fetch().plan(ctx(tmp_path), args(bucket, endpoint, sha256="md5:abc"))


def test_bytes_swapped_behind_the_servers_back_fail_naming_both_digests(s3, tmp_path):
    client, bucket, endpoint = s3
    good = tarball({"index.html": b"good"})
    evil = tarball({"index.html": b"evil"})
    put(client, bucket, "w.tar.gz", good)
    MotoServer.backend("s3").buckets[bucket].keys["w.tar.gz"].value = evil  # checksum and ETag untouched
    with pytest.raises(ModuleError) as err:
        S3Fetch().plan(ctx(tmp_path), args(bucket, endpoint))
    text = str(err.value)
    assert sha(good) in text and sha(evil) in text and f"s3://{bucket}/w.tar.gz" in text
    assert "ChecksumSHA256" in text and "nothing was extracted" in text
    assert "botocore" not in text
    cache = tmp_path / "cache" / "sha256"
    assert not cache.exists() or os.listdir(cache) == []
    assert os.listdir(tmp_path / "cache" / "tmp") == []


def test_unchecksummed_object_warns_and_versions(s3, tmp_path):
    client, bucket, endpoint = s3
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v1 = put(client, bucket, "w.tar.gz", tarball({"v": b"1"}), checksum=False)["VersionId"]
    put(client, bucket, "w.tar.gz", tarball({"v": b"2"}), checksum=False)
    c = ctx(tmp_path)
    latest = S3Fetch().plan(c, args(bucket, endpoint))
    assert (Path(latest.outputs["path"]) / "v").read_text() == "2"
    assert latest.outputs["version"] and latest.outputs["version"] != v1
    assert any("unverified" in m and "no ChecksumSHA256" in m for m in c.warnings)
    old = S3Fetch().plan(ctx(tmp_path), args(bucket, endpoint, version_id=v1))
    assert (Path(old.outputs["path"]) / "v").read_text() == "1" and old.outputs["version"] == v1


def test_extract_none_and_plain_files(s3, tmp_path):
    client, bucket, endpoint = s3
    put(client, bucket, "config.json", b'{"a": 1}')
    plan = S3Fetch().plan(ctx(tmp_path), args(bucket, endpoint, key="config.json"))
    assert Path(plan.outputs["path"]).read_bytes() == b'{"a": 1}'
    put(client, bucket, "keep.tar.gz", tarball({"x": b"x"}))
    plan = S3Fetch().plan(ctx(tmp_path), args(bucket, endpoint, key="keep.tar.gz", extract="none"))
    assert Path(plan.outputs["path"]).is_file()


def test_hostile_archive_from_s3_is_rejected(s3, tmp_path):
    client, bucket, endpoint = s3
    put(client, bucket, "w.tar.gz", tarball({"ok": b"ok"}, evil=True))
    with pytest.raises(UnsafeEntry, match=r"contains '\.\.'"):
        S3Fetch().plan(ctx(tmp_path), args(bucket, endpoint))
    entry = next((tmp_path / "cache" / "sha256").iterdir())
    assert sorted(os.listdir(entry)) == ["blob"]  # verified bytes kept, no tree, no staging dir
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_errors_are_translated(s3, tmp_path, monkeypatch):
    client, bucket, endpoint = s3
    monkeypatch.setattr("modules.s3_fetch.MAX_ATTEMPTS", 1)  # a refused connection: no back-off in tests
    with pytest.raises(ModuleError, match=f"s3://{bucket}/missing.tar.gz: no such object"):
        S3Fetch().plan(ctx(tmp_path), args(bucket, endpoint, key="missing.tar.gz"))
    with pytest.raises(ModuleError, match="no such"):
        S3Fetch().plan(ctx(tmp_path), args("no-such-bucket-here", endpoint))
    with pytest.raises(ModuleError, match="profile 'nope' is not configured"):
        S3Fetch().plan(ctx(tmp_path), args(bucket, endpoint, profile="nope"))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ModuleError) as err:
        S3Fetch().plan(ctx(tmp_path), args(bucket, dead))
    assert "cannot reach" in str(err.value) or "failed" in str(err.value)
    assert FAKE_SECRET_KEY not in str(err.value)


def test_recorder_records_sources_of_successful_runs_only(tmp_path):
    rec = ArtifactRecorder(tmp_path, "deploy-widgets")
    outs = {"path": "/x", "digest": "sha256:" + "a" * 64, "version": "v1", "uri": "s3://b/k"}
    results = [
        StepResult("sources.widgets", None, Status.CHANGED, outputs=outs),
        StepResult("sync", "host01", Status.CHANGED, outputs={"digest": "nope"}),
    ]
    failed = RunSummary(
        "run-0",
        "p.yml",
        "run",
        ["host01"],
        ["sources.widgets", "sync"],
        results=results + [StepResult("flush", "host01", Status.FAILED)],
    )
    rec(RunFinished(failed))
    assert last_deployed(tmp_path, "deploy-widgets", "widgets") is None
    rec(RunFinished(RunSummary("plan-1", "p.yml", "plan", ["host01"], [], results=results)))
    assert last_deployed(tmp_path, "deploy-widgets", "widgets") is None
    ok = RunSummary("run-1", "p.yml", "run", ["host01"], [], results=results)
    rec(RunFinished(ok))
    rec(RunFinished(RunSummary("run-2", "p.yml", "run", ["host01"], [], results=results)))  # same digest: once
    entries = history(tmp_path, "deploy-widgets", "widgets")
    assert len(entries) == 1
    assert entries[0]["digest"] == outs["digest"] and entries[0]["version"] == "v1"
    assert entries[0]["run_id"] == "run-1" and entries[0]["uri"] == "s3://b/k" and entries[0]["time"] > 0
    assert (tmp_path / "artifacts" / "deploy-widgets" / "widgets.json").is_file()
