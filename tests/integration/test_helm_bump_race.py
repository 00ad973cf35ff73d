"""helm_bump through the CLI against a real bare git remote (issue 15 item 7): a racing commit
that already set the same value is "no change", not "changed" with nothing pushed; a `semver`
policy meeting tags that are no semantic version is an error naming them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.cli import main
from tests.harness.gitrepo import GitRemote

FILE = "staging/values.yaml"
VALUES = "# staging values\nimage:\n  repository: registry.example.test/shop/web\n  tag: 1.4.0   # bumped by CI\n"


def playbook(tmp_path: Path, remote: GitRemote, **policy) -> list[str]:
    step = {
        "id": "bump",
        "module": "helm_bump",
        "args": {
            "repo": remote.url,
            "file": FILE,
            "key_path": "image.tag",
            "author_name": "Deploy Bot",
            "author_email": "deploy@example.test",
            **policy,
        },
    }
    (tmp_path / "p.yml").write_text(json.dumps({"name": "bump", "steps": [step]}))
    (tmp_path / "inv.yml").write_text("hosts: {}\n")
    return ["-i", str(tmp_path / "inv.yml"), "--state-dir", str(tmp_path / "state"), "--format", "json"]


def cli(capsys, *argv: str) -> tuple[int, dict]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert out.strip().startswith("{"), out + err
    return code, json.loads(out)


def test_a_racing_commit_with_the_same_value_is_no_change(tmp_path, capsys, monkeypatch):
    remote = GitRemote(tmp_path / "git", {FILE: VALUES, "README.md": "gitops\n"})
    opts = playbook(tmp_path, remote, tag="1.5.0")
    # someone else pushes the very same bump just before our push
    shim = remote.race_shim(tmp_path / "shim", FILE, VALUES.replace("tag: 1.4.0", "tag: 1.5.0"), times=1)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    code, doc = cli(capsys, "run", str(tmp_path / "p.yml"), *opts)
    [res] = [r for r in doc["results"] if r["step"] == "bump"]
    assert remote.pushes_seen(shim) == 1 and remote.log("%s", n=1) == ["concurrent change 0"]  # nothing of ours
    assert res["status"] == "ok", res
    assert "no change" in res["message"] and "1.5.0" in res["message"] and remote.head()[:12] in res["message"]
    assert code == 0


@pytest.mark.parametrize("policy", [{"tag_order": "semver"}, {"semver_range": "^1.4"}])
def test_semver_policy_with_non_semver_tags_is_an_error_naming_them(tmp_path, capsys, policy):
    remote = GitRemote(tmp_path / "git", {FILE: VALUES, "README.md": "gitops\n"})
    start = remote.head()
    opts = playbook(tmp_path, remote, tags=["1.4.0", "1.5.0", "latest", "main-abc1234"], **policy)
    code, doc = cli(capsys, "plan", str(tmp_path / "p.yml"), *opts)
    [res] = [r for r in doc["results"] if r["step"] == "bump"]
    assert code == 1 and res["status"] == "failed", res
    assert "latest" in res["message"] and "main-abc1234" in res["message"] and "semantic version" in res["message"]
    assert remote.head() == start
