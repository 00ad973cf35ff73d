"""A cached artifact is verified on every use (issue 15 item 5): the blob is re-hashed and the
extracted tree compared with the manifest recorded at extraction, before every deploy and
rollback. Against moto's real S3 server and a real Verdaccio."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import boto3
import pytest

from engine.errors import ModuleError
from engine.model.results import Change
from engine.module import ApplyContext, PlanContext
from engine.record.deployed import record_deployed
from modules.npm_fetch import NpmFetch, NpmFetchArgs
from modules.recorded_artifact import RecordedArtifact, RecordedArtifactArgs
from modules.s3_fetch import S3Fetch
from tests.harness.moto import MotoServer
from tests.modules.test_npm_fetch import make_package, unique
from tests.modules.test_s3_fetch import args, put, sha, tarball


@pytest.fixture
def s3(moto_s3):
    client = boto3.client("s3", endpoint_url=moto_s3)
    bucket = f"reverify-{os.urandom(6).hex()}"
    client.create_bucket(Bucket=bucket)
    return client, bucket, moto_s3


def ctx(state: Path, step: str = "sources.widgets", cls=PlanContext, playbook: str = "deploy-widgets"):
    infos: list[str] = []
    warnings: list[str] = []
    c = cls(
        host=None,
        step=step,
        vars={"run": {"playbook": playbook}},
        run_id="r1",
        release_id="rel1",
        state_dir=str(state),
        mode="plan" if cls is PlanContext else "run",
        emit=infos.append,
        warn=warnings.append,
    )
    c.infos, c.warnings = infos, warnings  # type: ignore[attr-defined]
    return c


def deployed_widgets(s3, state: Path) -> tuple[bytes, Path]:
    client, bucket, endpoint = s3
    data = tarball({"index.html": b"<h1>widgets 1</h1>", "js/app.js": b"app()"})
    put(client, bucket, "w.tar.gz", data)
    plan = S3Fetch().plan(ctx(state), args(bucket, endpoint))
    record_deployed(state, "deploy-widgets", "widgets", digest=sha(data), version=None, run_id="r1")
    return data, Path(plan.outputs["path"])


def test_s3_tampered_cached_tree_is_extracted_again_and_said(s3, tmp_path):
    _, bucket, endpoint = s3
    data, tree = deployed_widgets(s3, tmp_path)
    (tree / "js/app.js").write_bytes(b"steal()")
    (tree / "extra.php").write_text("<?php evil();")
    c = ctx(tmp_path)
    plan = S3Fetch().plan(c, args(bucket, endpoint))
    assert plan.change == Change.NO_CHANGE  # the same object: only the cache copy was bad
    assert (tree / "js/app.js").read_bytes() == b"app()" and not (tree / "extra.php").exists()
    assert Path(plan.outputs["path"]) == tree
    [warning] = c.warnings
    assert "modified since it was extracted" in warning and "changed: js/app.js" in warning
    assert "added: extra.php" in warning and f"s3://{bucket}/w.tar.gz" in warning
    # apply checks again: a tree changed between plan and apply is not deployed either
    (tree / "index.html").unlink()
    a = ctx(tmp_path, cls=ApplyContext)
    out = S3Fetch().apply(a, plan)
    assert (Path(out["path"]) / "index.html").read_bytes() == b"<h1>widgets 1</h1>"
    assert any("missing: index.html" in w for w in a.warnings)
    # an intact tree: no warning, nothing extracted again
    inode = os.stat(tree / "index.html").st_ino
    quiet = ctx(tmp_path)
    S3Fetch().plan(quiet, args(bucket, endpoint))
    assert quiet.warnings == [] and os.stat(tree / "index.html").st_ino == inode


def test_s3_tampered_cached_blob_is_fetched_again(s3, tmp_path):
    client, bucket, endpoint = s3
    data, tree = deployed_widgets(s3, tmp_path)
    blob = tree.parent / "blob"
    blob.write_bytes(tarball({"index.html": b"evil"}))
    c = ctx(tmp_path)
    plan = S3Fetch().plan(c, args(bucket, endpoint))
    assert plan.outputs["digest"] == sha(data) and hashlib.sha256(blob.read_bytes()).hexdigest() == sha(data)[7:]
    assert (Path(plan.outputs["path"]) / "index.html").read_bytes() == b"<h1>widgets 1</h1>"
    assert any("were changed on disk" in w and "fetched again" in w for w in c.warnings)
    assert any("fetching" in m for m in c.infos)


def test_s3_tampered_blob_with_a_pin_fails_when_the_source_changed_too(s3, tmp_path):
    client, bucket, endpoint = s3
    data, tree = deployed_widgets(s3, tmp_path)
    (tree.parent / "blob").write_bytes(b"tampered")
    MotoServer.backend("s3").buckets[bucket].keys["w.tar.gz"].value = b"also tampered"
    c = ctx(tmp_path)
    with pytest.raises(ModuleError, match="digest mismatch"):
        S3Fetch().plan(c, args(bucket, endpoint, sha256=sha(data)))
    assert any("were changed on disk" in w for w in c.warnings)
    assert not (tree / "index.html").exists()  # the damaged entry is gone, nothing was handed out


def test_npm_tampered_cached_tree_is_extracted_again(verdaccio, tmp_path):
    name = unique()
    rc = verdaccio.npmrc(tmp_path / ".npmrc")
    verdaccio.publish(make_package(tmp_path, name, "1.0.0", {"index.html": "<h1>t1</h1>"}))
    state = tmp_path / "state"
    kw = dict(package=name, npmrc=str(rc))
    first = NpmFetch().plan(ctx(state, "sources.templates", playbook="t"), NpmFetchArgs(**kw))
    record_deployed(state, "t", "templates", digest=first.outputs["integrity"], version="1.0.0")
    tree = Path(first.outputs["path"])
    (tree / "index.html").write_text("<h1>defaced</h1>")
    c = ctx(state, "sources.templates", playbook="t")
    again = NpmFetch().plan(c, NpmFetchArgs(**kw))
    assert again.change == Change.NO_CHANGE and "already deployed" in again.reason
    assert (tree / "index.html").read_text() == "<h1>t1</h1>"
    assert any("changed: index.html" in w for w in c.warnings)


def test_rollback_source_reverifies_the_cached_tree(s3, tmp_path):
    data, tree = deployed_widgets(s3, tmp_path)
    os.chmod(tree / "index.html", 0o777)
    c = ctx(tmp_path, "sources.widgets")
    plan = RecordedArtifact().plan(c, RecordedArtifactArgs(digest=sha(data), release="r1", path=str(tree)))
    assert plan.outputs["available"] is True and Path(plan.outputs["path"]) == tree
    assert os.stat(tree / "index.html").st_mode & 0o777 == 0o644
    assert any("changed: index.html" in w for w in c.warnings)


def test_a_tree_cached_without_a_manifest_is_extracted_again_quietly(s3, tmp_path):
    _, bucket, endpoint = s3
    data, tree = deployed_widgets(s3, tmp_path)
    (tree.parent / "tree.manifest.json").unlink()  # as a cache from before manifests were kept
    (tree / "js/app.js").write_bytes(b"steal()")
    c = ctx(tmp_path)
    plan = S3Fetch().plan(c, args(bucket, endpoint))
    assert (Path(plan.outputs["path"]) / "js/app.js").read_bytes() == b"app()"
    assert c.warnings == [] and (tree.parent / "tree.manifest.json").is_file()
