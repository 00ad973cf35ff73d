"""docs/scale.md's GitLab pipeline, run for real by gitlab-ci-local in shell mode: plan, then
`parallel: 4` apply jobs at once, then finalize, against the real sshd fleet with the shared
state in moto's S3 server. The pipeline file is the documented one, unchanged; only the
variables a project sets differently (the bucket, here on loopback) are given on the command
line, as pipeline variables."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.fleet

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "scale.md"
BINARY = (
    Path(os.environ.get("PLAYBOOK_TEST_CACHE", Path.home() / ".cache" / "playbook-tests"))
    / "gitlab-ci-local-4.65.1"
    / "node_modules"
    / ".bin"
    / "gitlab-ci-local"
)


def pipeline() -> str:
    text = DOC.read_text()
    section = text[text.index("## GitLab CI") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "no yaml block in the GitLab CI section"
    return block.group(1)


def _git(*argv: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=CI", "-c", "user.email=ci@example.com", *argv], cwd=cwd, check=True, timeout=60
    )


@pytest.fixture
def gitlab_ci_local():
    if BINARY.exists() and shutil.which("node"):
        return BINARY
    why = f"gitlab-ci-local 4.65.1 not installed ({BINARY}; run .ci/install-gitlab-ci-local.sh)"
    if os.environ.get("CI"):
        pytest.fail(why + "; CI is set, so the pipeline test must run")
    pytest.skip(why)


def test_the_documented_pipeline_deploys_in_four_shards(gitlab_ci_local, fleet_factory, moto_s3, tmp_path):
    import boto3

    from engine.record.state import open_history

    fleet = fleet_factory(4)
    bucket = f"deploy-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=bucket)
    state = f"s3://{bucket}/smartweb?endpoint_url={moto_s3}"

    project = tmp_path / "project"  # the repository the pipeline runs in
    (project / "site" / "app").mkdir(parents=True)
    (project / "site" / "app" / "index.php").write_text("<?php // v1\n")
    (project / "playbooks").mkdir()
    shutil.copy(ROOT / "playbooks" / "deploy-smartweb.yml", project / "playbooks" / "deploy-smartweb.yml")
    inv = fleet.write_inventory(project / "inventory" / "production.yml")
    doc = yaml.safe_load(inv.read_text())
    for host in doc["hosts"].values():
        host["vars"]["app_root"] = f"{host['vars']['root']}/app"
        host["vars"]["cache_flush_command"] = ["true"]
    inv.write_text(yaml.safe_dump(doc))
    (project / ".gitlab-ci.yml").write_text(pipeline())
    (project / ".gitignore").write_text(".gitlab-ci-local/\n.playbook/\nplan.*\n")
    _git("init", "-q", "-b", "main", cwd=project)
    _git("add", "-A", cwd=project)
    _git("commit", "-qm", "site v1", cwd=project)

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "playbook"
    shim.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m engine.cli "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [str(gitlab_ci_local), "--variable", f"PLAYBOOK_STATE={state}", "--variable", "CI_DEFAULT_BRANCH=main"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for job in ("plan", "apply: [1/4]", "apply: [2/4]", "apply: [3/4]", "apply: [4/4]", "finalize"):
        assert re.search(rf"PASS\s+{re.escape(job)}", out), (job, out)

    import json

    release = json.loads((project / "plan.json").read_text())["release_id"]
    for h in fleet:  # every host serves the planned release
        current = Path(h.data_dir) / "app" / "current"
        assert os.readlink(current) == f"releases/{release}"
        assert (current / "app" / "index.php").read_text() == "<?php // v1\n"
    runs = {r.run_id.rsplit(".", 1)[1]: r for r in open_history(state, "").runs(limit=100)}
    assert set(runs) == {"s1of4", "s2of4", "s3of4", "s4of4", "coord"}
    assert {r.status for r in runs.values()} == {"ok"} and {r.release_id for r in runs.values()} == {release}
