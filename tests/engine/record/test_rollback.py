"""Rollback planning from the history: target release, migrations guard, generated steps."""

from __future__ import annotations

import time

import pytest

from engine.errors import PlaybookError
from engine.model.config import CONTROLLER, Fleet, Playbook, Source, Step
from engine.model.results import Change, Plan, Status, StepResult
from engine.record.history import History
from engine.record.rollback import RollbackRefused, plan_rollback, without_budget


def playbook() -> Playbook:
    steps = (
        Step("sync", "rsync", "web", {"src": "x", "dest": "{{ app_root }}", "releases": True}),
        Step("migrate_db", "migrate", "db", {"name": "m1", "up": "u", "down": "d", "chdir": "/srv"}),
        Step("canary", "canary_switch", "k8s", {"action": "set_image", "image": "{{ img }}", "container": "web"}),
        Step(
            "bump",
            "helm_bump",
            CONTROLLER,
            {"repo": "r", "file": "f", "tags": ["master-1"], "author_name": "a", "author_email": "a@b"},
        ),
    )
    fleets = {"web": Fleet("web", "web"), "db": Fleet("db", "db"), "k8s": Fleet("k8s", "k8s")}
    return Playbook("pb.yml", "shop", {}, fleets, steps)


def record(hist: History, run_id: str, release: str, results: list[StepResult], status: str = "ok") -> None:
    hist.start_run(run_id=run_id, playbook="pb.yml", name="shop", mode="run", release_id=release)
    for r in results:
        hist.add_result(run_id, r)
    hist.finish_run(run_id, 0 if status == "ok" else 1, status)
    time.sleep(0.01)


def res(step, host, status=Status.CHANGED, **outputs) -> StepResult:
    return StepResult(step, host, status, "", plan=Plan(Change.WILL_CHANGE, ""), outputs=outputs)


@pytest.fixture
def hist(tmp_path):
    h = History(str(tmp_path))
    record(
        h,
        "r1",
        "REL1",
        [
            res("sync", "w1"),
            res("canary", "k1", image="repo@sha256:aaa", colour="green"),
            res("bump", None, tag="master-1", image="repo:master-1"),
        ],
    )
    record(
        h,
        "r2",
        "REL2",
        [
            res("sync", "w1"),
            res("migrate_db", "d1", migration="m1", action="up", down="d"),
            res("canary", "k1", image="repo@sha256:bbb", colour="green"),
            res("bump", None, tag="master-2", image="repo:master-2"),
        ],
    )
    yield h
    h.close()


def test_refuses_across_migrations_then_generates_the_rollback(hist):
    with pytest.raises(RollbackRefused) as err:
        plan_rollback(playbook(), hist, to=None, with_migrations=False)
    assert "m1 on d1" in str(err.value) and "REL2" in str(err.value)
    plan = plan_rollback(playbook(), hist, to=None, with_migrations=True)
    assert (plan.current, plan.target) == ("REL2", "REL1")
    steps = {s.id: s for s in plan.playbook.steps}
    assert list(steps) == ["migration_down_0", "rollback_sync", "rollback_canary", "rollback_bump"]
    down = steps["migration_down_0"]
    assert down.args == {"name": "m1", "up": "", "down": "d", "action": "down", "chdir": "/srv"}
    assert plan.playbook.fleets[down.fleet].hosts == "d1"
    assert steps["rollback_sync"].args == {  # src is no playbook source: nothing to rebuild a removed release from
        "dest": "{{ app_root }}",
        "release": "REL1",
        "unavailable": "its src ('x', not a playbook source) has no recorded artifact for release REL1",
    }
    assert steps["rollback_sync"].needs == ("migration_down_0",)
    canary = steps["rollback_canary"]
    assert canary.args["action"] == "revert" and canary.args["image"] == "repo@sha256:aaa"
    assert canary.args["colour"] == "green" and canary.args["container"] == "web"
    bump = steps["rollback_bump"]
    assert bump.args["tag"] == "master-1" and "tags" not in bump.args and bump.fleet == CONTROLLER
    # the first host that fails stops a rollback; its plan still covers every host
    assert {f.max_fail_percentage for f in plan.playbook.fleets.values()} == {0}
    assert {f.max_fail_percentage for f in without_budget(plan.playbook).fleets.values()} == {None}


def test_targets(hist):
    with pytest.raises(PlaybookError, match="already the current release"):
        plan_rollback(playbook(), hist, to="REL2", with_migrations=True)
    with pytest.raises(PlaybookError, match="never deployed successfully"):
        plan_rollback(playbook(), hist, to="REL9", with_migrations=True)


def test_a_removed_release_is_rebuilt_from_the_artifact_recorded_for_it(tmp_path):
    bundle = Source("bundle", "s3", "s3_fetch", {"bucket": "{{ bucket }}", "key": "w.tgz", "sha256": None})
    sync = Step(
        "sync",
        "rsync",
        "web",
        {"src": "{{ sources.bundle.path }}", "dest": "/srv/w", "releases": True, "keep": 2, "exclude": ["*.log"]},
        needs=("sources.bundle",),
    )
    pb = Playbook(
        "pb.yml",
        "shop",
        {"bundle": bundle},
        {"web": Fleet("web", "web")},
        (Step("sources.bundle", "s3_fetch", CONTROLLER, bundle.args), sync),
    )
    h = History(str(tmp_path))
    try:
        for run, rel, digest, version in (
            ("r1", "REL1", "sha256:" + "a" * 64, "v1"),
            ("r2", "REL2", "sha256:" + "b" * 64, "v2"),
        ):
            record(
                h,
                run,
                rel,
                [
                    res(
                        "sources.bundle",
                        None,
                        digest=digest,
                        version=version,
                        path=f"/state/cache/sha256/{digest[7:]}/tree",
                    ),
                    res("sync", "w1"),
                ],
            )
        plan = plan_rollback(pb, h, to=None, with_migrations=False)
    finally:
        h.close()
    steps = {s.id: s for s in plan.playbook.steps}
    assert list(steps) == ["sources.bundle", "rollback_sync"]
    source = plan.playbook.sources["bundle"]
    assert (source.type, source.module) == ("recorded", "recorded_artifact")
    assert steps["sources.bundle"].module == "recorded_artifact" and steps["sources.bundle"].fleet == CONTROLLER
    assert source.args == {  # REL1's bytes, and how to fetch exactly them again: pinned by sha256 and version
        "digest": "sha256:" + "a" * 64,
        "release": "REL1",
        "path": "/state/cache/sha256/" + "a" * 64 + "/tree",
        "fetch": {
            "type": "s3",
            "bucket": "{{ bucket }}",
            "key": "w.tgz",
            "sha256": "sha256:" + "a" * 64,
            "version_id": "v1",
        },
    }
    switch = steps["rollback_sync"]
    assert switch.needs == ("sources.bundle",)
    assert switch.args == {
        "dest": "/srv/w",
        "release": "REL1",
        "src": "{{ sources.bundle.path }}",
        "unavailable": "{{ sources.bundle.error }}",
        "sync": {"keep": 2, "exclude": ["*.log"]},
    }


def test_cache_clears_follow_the_switch_with_the_outputs_the_target_recorded(tmp_path):
    steps = (
        Step("sync", "rsync", "web", {"src": "x", "dest": "/srv/a", "releases": True}),
        Step("build", "command", "web", {"command": ["true"]}),
        Step(
            "flush",
            "cache_clear",
            "web",
            {"command": ["wp", "cache", "flush"], "chdir": "/srv/a/current", "only_if_changed": ["sync"]},
            needs=("sync",),
            when="true",
        ),
        Step(
            "purge",
            "cache_clear",
            "web",
            {"command": ["true"], "chdir": "{{ steps.sync.release_name }}"},
            needs=("sync",),
        ),
        Step("stamp", "cache_clear", "web", {"command": ["{{ steps.build.stdout }}"]}, needs=("sync", "build")),
    )
    pb = Playbook("pb.yml", "shop", {}, {"web": Fleet("web", "web")}, steps)
    h = History(str(tmp_path))
    try:
        record(h, "r1", "REL1", [res("sync", "w1", release_name="REL1")])
        record(h, "r2", "REL2", [res("sync", "w1", release_name="REL2"), res("build", "w1", stdout="x")])
        plan = plan_rollback(pb, h, to=None, with_migrations=False)
    finally:
        h.close()
    generated = {s.id: s for s in plan.playbook.steps}
    # stamp reads steps.build, which REL1's run never recorded: left out
    assert list(generated) == ["rollback_sync", "rollback_flush", "rollback_purge"]
    flush = generated["rollback_flush"]
    assert flush.args["only_if_changed"] == ["rollback_sync"] and flush.needs == ("rollback_sync",)
    assert flush.args["chdir"] == "/srv/a/current" and flush.when == "true"
    assert generated["rollback_purge"].needs == ("rollback_sync",)
    # the templates of the rollback see sync as REL1's run recorded it
    assert plan.recorded == {("sync", "w1"): {"release_name": "REL1"}}
