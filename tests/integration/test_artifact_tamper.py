"""A tampered controller cache never reaches a host (issue 15 item 5): the shipped Widgets
playbook through the CLI, against moto's S3 server and the real sshd fleet. The cached tree is
changed after a deploy; the next run must deploy the verified bytes, not the tampered ones, and
say what it found."""

from __future__ import annotations

import uuid

import boto3
import pytest

from tests.integration.test_widgets_templates import WIDGETS, app_root, cli, fleet_setup, result, tgz

pytestmark = pytest.mark.fleet


def test_a_tampered_cached_tree_is_not_deployed(sshd_fleet, moto_s3, tmp_path, capsys):
    s3 = boto3.client("s3", endpoint_url=moto_s3)
    bucket = f"widgets-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    key = "widgets/widgets.tar.gz"
    s3.put_object(Bucket=bucket, Key=key, Body=tgz({"index.html": "<div>w</div>", "js/w.js": "w(1)"}))
    base = fleet_setup(sshd_fleet, tmp_path, "widgets_root", "widgets") + [
        "-e",
        f"widgets_bucket={bucket}",
        "-e",
        f"s3_endpoint_url={moto_s3}",
        "-e",
        f"widgets_key={key}",
    ]
    code, doc = cli(capsys, "run", str(WIDGETS), *base, "--release-id", "20260101T000001Z")
    assert code == 0, doc
    tree = result(doc, "sources.widgets")["outputs"]["path"]
    with open(f"{tree}/js/w.js", "w") as fh:  # someone (or something) edits the controller's cache
        fh.write("steal(document.cookie)")

    code, doc = cli(capsys, "run", str(WIDGETS), *base, "--release-id", "20260101T000002Z")
    assert code == 0, doc
    assert {r["status"] for r in doc["results"]} == {"ok"}  # the hosts already have the genuine bytes
    for h in sshd_fleet:
        assert (app_root(h, tmp_path, "widgets") / "current" / "js" / "w.js").read_text() == "w(1)"
    warnings = [m["text"] for m in doc["messages"] if m["level"] == "warning"]
    assert any("modified since it was extracted (changed: js/w.js)" in w for w in warnings), doc["messages"]
