"""`playbook drift` for `helm_bump` (issue 18, item 1) against a real bare git repository: the
image tag each step pushed, as recorded, against the field on the branch; someone else's commit
setting another tag is drift, and drift neither commits nor pushes."""

from __future__ import annotations

import json

from engine.cli import main
from tests.integration.test_helm_bump_git import PLAYBOOK, STAG, STAG_FILE, gitops  # noqa: F401 - the fixture


def drift(capsys, base: list[str]) -> tuple[int, dict]:
    code = main(["drift", str(PLAYBOOK), *base])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in out + err, out + err
    return code, json.loads(out)


def test_a_tag_changed_in_the_repository_behind_playbooks_back_is_drift(gitops, capsys):  # noqa: F811
    remote, base = gitops
    assert main(["run", str(PLAYBOOK), *base]) == 0, capsys.readouterr()
    capsys.readouterr()
    code, doc = drift(capsys, base)
    assert code == 0, doc
    assert {(h["host"], h["step"], h["status"]) for h in doc["hosts"]} == {
        ("controller", "production", "ok"),
        ("controller", "staging", "ok"),
    }
    assert {h["recorded"]["what"] for h in doc["hosts"]} == {
        "image master-20240502T091500Z-bbbbbbb",
        "image stag-20240503T120000Z-ccccccc",
    }

    remote.commit_other(STAG_FILE, STAG.replace("stag-20240101T000000Z-0a1b2c3", "stag-hotfix"), "hand-set tag")
    head = remote.head()
    code, doc = drift(capsys, base)
    assert code == 2, doc
    by_step = {h["step"]: h for h in doc["hosts"]}
    assert by_step["production"]["status"] == "ok" and by_step["staging"]["status"] == "drift"
    (finding,) = by_step["staging"]["findings"]
    assert finding["what"] == "values" and "image.tag stag-hotfix -> stag-20240503T120000Z-ccccccc" in finding["detail"]
    assert doc["drifted"] == ["controller"]
    assert remote.head() == head  # nothing committed or pushed
