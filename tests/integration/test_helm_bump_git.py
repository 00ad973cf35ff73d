"""playbooks/deploy-services.yml through the CLI against a real bare git repository: production
(Flux markers, `master-*`) and staging (key path, `stag-*`) bumped in one run, both pushing to
the same branch at once, a concurrent push from someone else survived, a re-run that commits
nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.cli import main
from tests.harness.gitrepo import GitRemote

PLAYBOOK = Path(__file__).resolve().parents[2] / "playbooks" / "deploy-services.yml"

PROD = """\
---
# Production release of shop-web. The tag is bumped by playbooks/deploy-services.yml.
apiVersion: helm.toolkit.fluxcd.io/v2beta1
kind: HelmRelease
metadata:
  name: shop-web
  namespace: shop
spec:
  releaseName: shop-web
  chart:
    spec: {chart: shop-web, version: "2.1.0", sourceRef: {kind: HelmRepository, name: charts}}
  values:
    image:
      repository: registry.example.com/hosting/shop-web # {"$imagepolicy": "flux-system:shop-web:name"}
      tag: "master-20240101T000000Z-0a1b2c3" # {"$imagepolicy": "flux-system:shop-web:tag"}
    ingress:
      hosts:
      - shop.example.com      # public
"""

STAG = """\
# staging values for shop-web

image:
    repository: registry.example.com/hosting/shop-web
    tag: stag-20240101T000000Z-0a1b2c3
    pullPolicy: Always   # staging pulls every time
replicas: 1
"""

TAGS = [
    "master-20240101T000000Z-0a1b2c3",
    "stag-20240101T000000Z-0a1b2c3",
    "master-20240502T091500Z-bbbbbbb",
    "stag-20240503T120000Z-ccccccc",
    "master-20240430T235959Z-aaaaaaa",
    "stag-20240503T115959Z-ddddddd",
    "latest",
    "pr-17",
]
PROD_FILE = "clusters/production/shop-web/helmrelease.yaml"
STAG_FILE = "clusters/staging/shop-web/values.yaml"


@pytest.fixture
def gitops(tmp_path):
    remote = GitRemote(tmp_path / "git", {PROD_FILE: PROD, STAG_FILE: STAG, "README.md": "gitops\n"})
    (tmp_path / "tags.json").write_text(json.dumps({"image_tags": TAGS, "gitops_repo": remote.url}))
    (tmp_path / "inv.yml").write_text("hosts: {}\n")  # every step runs on the controller
    base = [
        "-i",
        str(tmp_path / "inv.yml"),
        "-e",
        f"@{tmp_path / 'tags.json'}",
        "--state-dir",
        str(tmp_path / "state"),
        "--format",
        "json",
    ]
    return remote, base


def cli(capsys, *args: str) -> tuple[int, dict]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip().startswith("{") else {"stderr": err, "stdout": out}


def test_plan_run_and_rerun(gitops, capsys):
    remote, base = gitops
    start = remote.head()
    code, doc = cli(capsys, "plan", str(PLAYBOOK), *base)
    assert code == 2, doc
    by_step = {r["step"]: r for r in doc["results"]}
    prod_diff, prod_commit = by_step["production"]["plan"]["diffs"]
    assert prod_diff["before"] == PROD
    assert prod_diff["after"] == PROD.replace('"master-20240101T000000Z-0a1b2c3"', '"master-20240502T091500Z-bbbbbbb"')
    assert prod_commit["after"].endswith(
        "production: registry.example.com/hosting/shop-web master-20240502T091500Z-bbbbbbb\n"
    )
    assert "Author: Deploy Bot <deploy-bot@example.com>" in prod_commit["after"]
    assert by_step["staging"]["outputs"]["tag"] == "stag-20240503T120000Z-ccccccc"
    assert remote.head() == start  # the dry run pushed nothing

    code, doc = cli(capsys, "run", str(PLAYBOOK), *base)
    assert code == 0, doc
    assert remote.count() == 3  # initial + one commit per environment (one of them re-applied after a race)
    assert remote.diff(start).splitlines() == [
        '-      tag: "master-20240101T000000Z-0a1b2c3" # {"$imagepolicy": "flux-system:shop-web:tag"}',
        '+      tag: "master-20240502T091500Z-bbbbbbb" # {"$imagepolicy": "flux-system:shop-web:tag"}',
        "-    tag: stag-20240101T000000Z-0a1b2c3",
        "+    tag: stag-20240503T120000Z-ccccccc",
    ]
    subjects = sorted(remote.log("%an <%ae>|%s", n=2))
    assert subjects == [
        "Deploy Bot <deploy-bot@example.com>|production: registry.example.com/hosting/shop-web master-20240502T091500Z-bbbbbbb",
        "Deploy Bot <deploy-bot@example.com>|staging: registry.example.com/hosting/shop-web stag-20240503T120000Z-ccccccc",
    ]
    head = remote.head()
    code, doc = cli(capsys, "run", str(PLAYBOOK), *base)
    assert code == 0 and {r["status"] for r in doc["results"]} == {"ok"}, doc
    assert remote.head() == head  # a second run makes no commit


def test_someone_else_pushes_during_the_run(gitops, capsys, tmp_path, monkeypatch):
    remote, base = gitops
    start = remote.head()
    shim = remote.race_shim(tmp_path / "shim", "README.md", "edited by a human\n", times=1)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    code, doc = cli(capsys, "run", str(PLAYBOOK), *base)
    assert code == 0, doc
    assert remote.show("README.md") == "edited by a human\n# race 0\n"
    assert remote.show(PROD_FILE) == PROD.replace("20240101T000000Z-0a1b2c3", "20240502T091500Z-bbbbbbb")
    assert remote.show(STAG_FILE) == STAG.replace("20240101T000000Z-0a1b2c3", "20240503T120000Z-ccccccc")
    assert remote.count() == 4
    assert remote.pushes_seen(shim) >= 3  # at least one of ours was rejected and retried
    assert len(remote.diff(start).splitlines()) == 7  # their 3 README lines, our 2 tag lines x 2
