"""The GitLab CI example of docs/review-and-recovery.md, run as written: each job's `script`
in bash (errexit, as the runner does), with the `playbook` command on PATH, against the real
sshd fleet. Between `plan` and `deploy` the artifact is what GitLab would carry: files and the
dotenv report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.fleet

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "review-and-recovery.md"
KEY = "3b1f8e0c9d2a7b6c5d4e3f2a1b0c9d8e"


def ci_jobs() -> dict:
    text = DOC.read_text()
    section = text[text.index("## GitLab CI") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "no yaml block in the GitLab CI section"
    return yaml.safe_load(block.group(1))


@pytest.fixture
def ci(fleet_factory, tmp_path):
    fleet = fleet_factory(2)
    inv = fleet.write_inventory(tmp_path / "inventory.yml")
    doc = yaml.safe_load(inv.read_text())
    for host in doc["hosts"].values():  # what production's inventory would say for these hosts
        host["vars"]["app_root"] = f"{host['vars']['root']}/app"
        host["vars"]["cache_flush_command"] = ["true"]
    inv.write_text(yaml.safe_dump(doc))
    project = tmp_path / "project"  # $CI_PROJECT_DIR: the checked-out code
    (project / "app").mkdir(parents=True)
    (project / "app" / "index.php").write_text("<?php // v1\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "playbook"
    shim.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m engine.cli "$@"\n')
    curl = bin_dir / "curl"  # the MR note is "posted" into a file
    curl.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/curl-args\n')
    for f in (shim, curl):
        f.chmod(0o755)
    jobs = ci_jobs()
    env = {
        **os.environ,
        **{k: str(v) for k, v in jobs["variables"].items()},
        "PLAYBOOK": str(ROOT / jobs["variables"]["PLAYBOOK"]),  # the repository's playbook
        "INVENTORY": str(inv),
        "CI_PROJECT_DIR": str(project),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PLAN_BOT_TOKEN": "bot-token-not-used-here",
        "CI_API_V4_URL": "https://gitlab.invalid/api/v4",
        "CI_PROJECT_ID": "7",
        "CI_MERGE_REQUEST_IID": "42",
    }
    env.pop("PLAYBOOK_PLAN_KEY", None)
    env.pop("PLAYBOOK_PLAN_KEY_FILE", None)
    workdir = tmp_path / "job"
    workdir.mkdir()
    return fleet, jobs, env, workdir, tmp_path


def run_job(jobs: dict, name: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    script = "\n".join(jobs[name]["script"])
    return subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def dotenv(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def test_the_gitlab_ci_example_reviews_plans_signed_and_applies_exactly_that(ci):
    fleet, jobs, env, workdir, tmp_path = ci
    assert "PLAYBOOK_PLAN_KEY" not in jobs["variables"]  # a masked CI/CD variable, never in the file

    review = run_job(jobs, "review", env, workdir)
    assert review.returncode == 0, review.stderr
    assert "will change" in (workdir / "plan.md").read_text()
    assert "body@plan.md" in (tmp_path / "curl-args").read_text()

    refused = run_job(jobs, "plan", env, workdir)  # the protected key is missing: no plan is saved
    assert refused.returncode != 0 and not (workdir / "plan.json").exists()

    signed_env = {**env, "PLAYBOOK_PLAN_KEY": KEY}
    plan = run_job(jobs, "plan", signed_env, workdir)
    assert plan.returncode == 0, plan.stderr
    assert "signed with key id" in plan.stderr
    carried = dotenv(workdir / "plan.env")
    assert carried == {"PLAN_EXIT": "2"}

    pristine = (workdir / "plan.json").read_text()
    (workdir / "plan.json").write_text(pristine.replace('"release_id": "', '"release_id": "X'))
    tampered = run_job(jobs, "deploy", {**signed_env, **carried}, workdir)
    assert tampered.returncode == 1 and "altered" in tampered.stderr
    for h in fleet:
        assert not (Path(h.data_dir) / "app" / "current").exists()

    (workdir / "plan.json").write_text(pristine)
    deploy = run_job(jobs, "deploy", {**signed_env, **carried}, workdir)
    assert deploy.returncode == 0, deploy.stderr
    for h in fleet:
        assert (Path(h.data_dir) / "app" / "current" / "app" / "index.php").read_text() == "<?php // v1\n"
