"""The scheduled GitLab CI job of docs/drift.md, run as written: its `script` in bash (errexit,
as the runner does) with the `playbook` command on PATH, against the real sshd fleet deployed by
a real run first. No drift: no issue. A file edited on a host: the issue is opened with the
Markdown. A host down: the job fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.fleet

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "drift.md"


def ci_job() -> dict:
    text = DOC.read_text()
    section = text[text.index("## A scheduled GitLab CI job") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "no yaml block in the GitLab CI section"
    return yaml.safe_load(block.group(1))["drift"]


def test_the_scheduled_drift_job_opens_an_issue_only_on_drift(fleet_factory, tmp_path):
    fleet = fleet_factory(2)
    job = ci_job()
    work = tmp_path / "job"  # the checked-out repository the job runs in
    (work / "playbooks").mkdir(parents=True)
    (work / "inventory").mkdir()
    shutil.copy(ROOT / "playbooks" / "deploy-smartweb.yml", work / "playbooks" / "deploy-smartweb.yml")
    inv = fleet.write_inventory(work / "inventory" / "production.yml")
    doc = yaml.safe_load(inv.read_text())
    for host in doc["hosts"].values():
        host["vars"]["app_root"] = f"{host['vars']['root']}/app"
        host["vars"]["cache_flush_command"] = ["true"]
    inv.write_text(yaml.safe_dump(doc))
    tree = tmp_path / "code"
    (tree / "wp-content" / "themes").mkdir(parents=True)
    (tree / "index.php").write_text("<?php // v1\n")
    (tree / "wp-content" / "themes" / "site.css").write_text("a{}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "playbook"
    shim.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m engine.cli "$@"\n')
    curl = bin_dir / "curl"  # the issue is "opened" into a file
    curl.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/curl-args\n')
    for f in (shim, curl):
        f.chmod(0o755)
    env = {
        **os.environ,
        **{k: str(v) for k, v in job["variables"].items()},
        "PLAYBOOK_STATE_DIR": str(tmp_path / "state"),  # the deploy host's, here a temp dir
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DRIFT_BOT_TOKEN": "bot-token-not-used-here",
        "CI_API_V4_URL": "https://gitlab.invalid/api/v4",
        "CI_PROJECT_ID": "7",
    }

    def sh(script: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-e", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )

    deploy = sh(
        f"playbook run playbooks/deploy-smartweb.yml -i inventory/production.yml -e {json.dumps('smartweb_tree=' + str(tree))}"
    )
    assert deploy.returncode == 0, deploy.stderr
    script = "\n".join(job["script"])

    clean = sh(script)
    assert clean.returncode == 0, clean.stderr
    assert "no drift: 2 host(s)" in (work / "drift.md").read_text()
    assert not (tmp_path / "curl-args").exists()  # no drift, no issue

    edited = Path(fleet[0].data_dir) / "app" / "current" / "wp-content" / "themes" / "site.css"
    edited.write_text("a{color:red}\n")
    drifted = sh(script)
    assert drifted.returncode == 0, drifted.stderr
    md = (work / "drift.md").read_text()
    assert f"### {fleet[0].name} (sync)" in md and "`wp-content/themes/site.css`" in md, md
    args = (tmp_path / "curl-args").read_text()
    assert "description@drift.md" in args and "title=Drift on production" in args
    assert "https://gitlab.invalid/api/v4/projects/7/issues" in args

    fleet.stop_host(1)
    down = sh(script)
    assert down.returncode != 0  # a host that cannot be read fails the job
    assert "could not be read" in (work / "drift.md").read_text()
