"""helm_bump against real bare git repositories: exact-line edits, races, idempotence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import ArgError, ModuleError
from engine.model.results import UNKNOWN, Change, Status
from engine.module import ApplyContext, PlanContext, get_module
from engine.yamlio.scalars import find_key_path, find_markers, set_scalars
from modules.helm_bump import HelmBumpArgs, parse_image
from tests.harness.gitrepo import GitRemote

MODULE = get_module("helm_bump")
DIGEST = "sha256:" + "ab" * 32

RELEASE = """\
# Production release of the shop web service.
# Managed by playbook (helm_bump); edit the policy, not the tag.
apiVersion: helm.toolkit.fluxcd.io/v2beta1
kind: HelmRelease
metadata:
  name: web
  namespace: shop   # keep in sync with the kustomization
spec:
  interval: 5m
  chart:
    spec:
      chart: ./charts/web
      version: '1.4.0'

  values:
    replicaCount: 3
    image:
      repository: "registry.example.test/shop/web"   # {"$imagepolicy": "flux-system:web:name"}
      tag: 'master-20240101T000000Z-0a1b2c3'  # {"$imagepolicy": "flux-system:web:tag"}
      pullPolicy: IfNotPresent
    worker:
        image: registry.example.test/shop/worker:master-20240101T000000Z-0a1b2c3 # {"$imagepolicy": "flux-system:worker"}
        env:
            - {name: MODE,  value: "worker"}
            - name: QUEUE
              value: jobs     # trailing spaces after this comment   
    nginx:
      image: nginx:1.25   # not managed
"""

VALUES = """\
# staging values
image:
  repository: registry.example.test/shop/web
  tag: stag-41   # bumped by CI
  digest: ""
resources: {limits: {cpu: 500m}}
"""

TAGS = (
    "master-20240101T000000Z-0a1b2c3",
    "master-20240315T101500Z-9f8e7d6",
    "stag-20240401T000000Z-1111111",
    "master-20240214T000000Z-5555555",
    "latest",
)


@pytest.fixture
def remote(tmp_path) -> GitRemote:
    return GitRemote(
        tmp_path / "git", {"releases/web.yaml": RELEASE, "staging/values.yaml": VALUES, "README.md": "gitops\n"}
    )


def ctxs(tmp_path: Path, step: str = "bump"):
    common = dict(
        host=None,
        step=step,
        vars={"playbook_dir": str(tmp_path)},
        run_id="r",
        release_id="rel",
        state_dir=str(tmp_path / "state"),
    )
    return PlanContext(**common), ApplyContext(mode="run", **common)


def args(remote: GitRemote, **kw) -> HelmBumpArgs:
    base = dict(repo=remote.url, file="releases/web.yaml", author_name="Deploy Bot", author_email="deploy@example.test")
    base.update(kw)
    return HelmBumpArgs(**base)


def run(tmp_path, a):
    pctx, actx = ctxs(tmp_path)
    p = MODULE.plan(pctx, a)
    out = MODULE.apply(actx, p) if p.change == Change.WILL_CHANGE else None
    return p, out


def test_marker_edit_changes_exactly_the_marked_line(remote, tmp_path):
    start = remote.head()
    a = args(remote, policy="flux-system:web", tags=TAGS, tag_pattern="master-*")
    p, out = run(tmp_path, a)
    assert p.change == Change.WILL_CHANGE
    assert p.outputs["tag"] == "master-20240315T101500Z-9f8e7d6" and p.outputs["commit"] is UNKNOWN
    assert p.fingerprint["remote_head"] == start
    assert out["pushed"] and out["commit"] == remote.head()
    assert remote.diff(start) == (
        '-      tag: \'master-20240101T000000Z-0a1b2c3\'  # {"$imagepolicy": "flux-system:web:tag"}\n'
        '+      tag: \'master-20240315T101500Z-9f8e7d6\'  # {"$imagepolicy": "flux-system:web:tag"}'
    )
    assert remote.show("releases/web.yaml") == RELEASE.replace("0101T000000Z-0a1b2c3'", "0315T101500Z-9f8e7d6'")
    author, committer, subject = remote.log()[0].split("|")
    assert author == committer == "Deploy Bot <deploy@example.test>"
    assert subject == "deploy: master-20240315T101500Z-9f8e7d6 in releases/web.yaml"


def test_whole_image_marker_with_digest_and_repository(remote, tmp_path):
    start = remote.head()
    a = args(
        remote,
        policy="flux-system:worker",
        tag="master-20240315T101500Z-9f8e7d6",
        digest=DIGEST,
        message="Bump {repository} to {version}",
    )
    p, out = run(tmp_path, a)
    assert remote.diff(start).splitlines() == [
        '-        image: registry.example.test/shop/worker:master-20240101T000000Z-0a1b2c3 # {"$imagepolicy": "flux-system:worker"}',
        f'+        image: registry.example.test/shop/worker:master-20240315T101500Z-9f8e7d6@{DIGEST} # {{"$imagepolicy": "flux-system:worker"}}',
    ]
    assert remote.log()[0].endswith("|Bump registry.example.test/shop/worker to master-20240315T101500Z-9f8e7d6")


def test_key_path_edit_in_values_file_and_dry_run_diff(remote, tmp_path):
    start = remote.head()
    a = args(
        remote,
        file="staging/values.yaml",
        key_path="image.tag",
        tags=TAGS + ("stag-42", "stag-7"),
        tag_pattern="stag-*",
        tag_order="build",
        message="staging: {tag}",
    )
    pctx, _ = ctxs(tmp_path)
    p = MODULE.plan(pctx, a)
    assert p.change == Change.WILL_CHANGE and p.outputs["tag"] == "stag-20240401T000000Z-1111111"
    # build order: the first number after the prefix; a timestamp-like 20240401 wins over 42
    a = args(
        remote,
        file="staging/values.yaml",
        key_path="image.tag",
        tags=("stag-42", "stag-7", "stag-41"),
        tag_pattern="stag-*",
        message="staging: {tag}",
        committer_name="CI",
        committer_email="ci@example.test",
    )
    p = MODULE.plan(pctx, a)
    yaml_diff, commit = p.diffs
    assert yaml_diff.header.endswith("main:staging/values.yaml")
    assert yaml_diff.before == VALUES and yaml_diff.after == VALUES.replace("stag-41 ", "stag-42 ")
    assert (
        "Author: Deploy Bot <deploy@example.test>" in commit.after and "Committer: CI <ci@example.test>" in commit.after
    )
    assert commit.after.endswith("staging: stag-42\n")
    assert remote.head() == start  # planning pushed nothing
    _, out = run(tmp_path, a)
    assert remote.diff(start) == "-  tag: stag-41   # bumped by CI\n+  tag: stag-42   # bumped by CI"
    assert remote.log()[0] == "Deploy Bot <deploy@example.test>|CI <ci@example.test>|staging: stag-42"


def test_second_run_makes_no_commit(remote, tmp_path):
    a = args(remote, policy="flux-system:web", tags=TAGS, tag_pattern="master-*")
    run(tmp_path, a)
    head, count = remote.head(), remote.count()
    p, out = run(tmp_path, a)
    assert p.change == Change.NO_CHANGE and "already has master-20240315T101500Z-9f8e7d6" in p.reason
    assert out is None and remote.head() == head and remote.count() == count
    assert p.outputs["commit"] == head


def test_concurrent_push_is_survived(remote, tmp_path, monkeypatch):
    start = remote.head()
    shim = remote.race_shim(tmp_path / "shim", "README.md", "changed by someone else\n", times=2)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    a = args(remote, policy="flux-system:web", tag="master-20240315T101500Z-9f8e7d6")
    p, out = run(tmp_path, a)
    assert out["pushed"] and out["attempts"] == 3
    assert remote.pushes_seen(shim) == 3
    log = remote.log("%s", n=4)
    assert log == [
        "deploy: master-20240315T101500Z-9f8e7d6 in releases/web.yaml",
        "concurrent change 1",
        "concurrent change 0",
        "initial",
    ]
    assert remote.show("README.md") == "changed by someone else\n# race 1\n"  # their change kept
    assert remote.diff("main~1").splitlines() == [  # our commit, re-applied on their head: one line
        '-      tag: \'master-20240101T000000Z-0a1b2c3\'  # {"$imagepolicy": "flux-system:web:tag"}',
        '+      tag: \'master-20240315T101500Z-9f8e7d6\'  # {"$imagepolicy": "flux-system:web:tag"}',
    ]
    assert remote.diff(start).count("\n") == 4


def test_push_gives_up_after_bounded_retries(remote, tmp_path, monkeypatch):
    shim = remote.race_shim(tmp_path / "shim", "README.md", "busy\n", times=10)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(ModuleError, match="still rejected after 2 retries"):
        run(tmp_path, args(remote, policy="flux-system:web", tag="master-2", push_retries=2))


def test_remote_already_bumped_between_plan_and_apply(remote, tmp_path):
    a = args(remote, policy="flux-system:web", tag="master-9")
    pctx, actx = ctxs(tmp_path)
    p = MODULE.plan(pctx, a)
    remote.commit_other("releases/web.yaml", RELEASE.replace("master-20240101T000000Z-0a1b2c3'", "master-9'"))
    head = remote.head()
    out = MODULE.apply(actx, p)
    assert out.status == Status.OK and out.message.startswith("no change: releases/web.yaml already has master-9")
    assert {k: out.outputs[k] for k in ("commit", "tag", "pushed")} == {
        "commit": head,
        "tag": "master-9",
        "pushed": False,
    }
    assert remote.head() == head


def test_errors_name_what_is_wrong(remote, tmp_path):
    pctx, _ = ctxs(tmp_path)
    with pytest.raises(ArgError, match="give 'key_path', 'policy' or both"):
        MODULE.plan(pctx, args(remote, tag="x"))
    with pytest.raises(ArgError, match="no tag matches pattern 'prod-\\*'"):
        MODULE.plan(pctx, args(remote, policy="flux-system:web", tags=TAGS, tag_pattern="prod-*"))
    with pytest.raises(ModuleError, match="no document has the key path 'spec.values.img.tag'"):
        MODULE.plan(pctx, args(remote, key_path="spec.values.img.tag", tag="x"))
    with pytest.raises(ModuleError, match="imagepolicy.*flux-system:nope"):
        MODULE.plan(pctx, args(remote, policy="flux-system:nope", tag="x"))
    with pytest.raises(ModuleError, match="does not exist on branch 'main'"):
        MODULE.plan(pctx, args(remote, file="nope.yaml", key_path="a", tag="x"))
    with pytest.raises(ArgError, match="'digest' must be sha256"):
        MODULE.plan(pctx, args(remote, policy="flux-system:web", digest="md5:1"))
    with pytest.raises(ArgError, match="placeholder \\{secret\\}"):
        MODULE.plan(pctx, args(remote, policy="flux-system:web", tag="x1", message="{secret}"))
    with pytest.raises(ModuleError, match="git clone exited"):
        MODULE.plan(pctx, args(remote, repo=f"file://{tmp_path}/missing.git", policy="flux-system:web", tag="x"))


def test_https_token_never_in_argv_or_errors(remote, tmp_path):
    from engine.secrets import SCRUBBER, Secret
    from modules.helm_bump import git_env

    env = git_env(args(remote, https_token=Secret("tok-very-secret-123")))
    assert "tok-very-secret-123" not in " ".join(env.get(k, "") for k in env if not k.startswith("GIT_CONFIG_VALUE"))
    assert SCRUBBER.scrub("x tok-very-secret-123 y") == "x ******** y"
    assert "StrictHostKeyChecking=yes" in env["GIT_SSH_COMMAND"]


# -- the editor on its own -------------------------------------------------------------------------


def test_every_other_byte_survives_multi_document_edits():
    text = RELEASE + '---\n# second doc\nspec: {values: {image: {tag: "1.0"}}}  # flow style\n'
    targets = find_key_path(text, "spec.values.image.tag")
    assert [t.line for t in targets] == [18, 30]
    out, _ = set_scalars(text, [(targets[0], "master-2"), (targets[1], "1.10")])
    before, after = text.splitlines(), out.splitlines()
    changed = [i for i, (x, y) in enumerate(zip(before, after)) if x != y]
    assert changed == [18, 30] and len(before) == len(after)
    assert after[30] == 'spec: {values: {image: {tag: "1.10"}}}  # flow style'
    assert out.endswith("\n") and "trailing spaces after this comment   \n" in out


def test_plain_values_that_would_change_type_get_quoted():
    text = "image:\n  tag: v1   # c\n"
    (t,) = find_key_path(text, "image.tag")
    assert set_scalars(text, [(t, "1.10")])[0] == 'image:\n  tag: "1.10"   # c\n'
    assert set_scalars(text, [(t, "yes")])[0] == 'image:\n  tag: "yes"   # c\n'
    assert set_scalars(text, [(t, "v2")]) == ("image:\n  tag: v2   # c\n", "roundtrip")


def test_markers_found_with_fields():
    found = {(m.policy, m.field, m.target.dotted()) for m in find_markers(RELEASE)}
    assert found == {
        ("flux-system:web", "name", "spec.values.image.repository"),
        ("flux-system:web", "tag", "spec.values.image.tag"),
        ("flux-system:worker", None, "spec.values.worker.image"),
    }


def test_parse_image():
    assert parse_image("reg:5000/a/b:1.0@" + DIGEST) == ("reg:5000/a/b", "1.0", DIGEST)
    assert parse_image("reg:5000/a/b") == ("reg:5000/a/b", None, None)
