"""Choosing a rollback's target from what the hosts serve (engine/record/live.py)."""

from __future__ import annotations

import time

import pytest

from engine.errors import PlaybookError, RollbackRefused
from engine.model.config import Fleet, Playbook, Step
from engine.model.results import Plan, RunSummary, Status, StepResult
from engine.record.history import History
from engine.record.live import Live, choose_target, live_from, live_state_playbook


def record(hist: History, run_id: str, release: str, status: str = "ok") -> None:
    hist.start_run(run_id=run_id, playbook="pb.yml", name="shop", mode="run", release_id=release)
    hist.finish_run(run_id, 0 if status == "ok" else 130, status)
    time.sleep(0.01)


@pytest.fixture
def hist(tmp_path):
    h = History(str(tmp_path))
    # R2 is older than R10 (deployed first) although it sorts after it by name
    for run, rel, status in (("a", "R2", "ok"), ("b", "R10", "ok"), ("c", "R11", "interrupted")):
        record(h, run, rel, status)
    yield h
    h.close()


def choose(hist, live, to=None):
    ok = sorted((r for r in hist.runs("shop") if r.status == "ok"), key=lambda r: r.started)
    return choose_target(hist, "shop", ok, live, to)


def everywhere(current: str, *releases: str) -> dict:
    return {("sync", h): Live(current, releases) for h in ("w1", "w2")}


def test_the_target_is_older_than_the_live_release_even_when_the_run_was_interrupted(hist):
    chosen = choose(hist, everywhere("R11", "R2", "R10", "R11"))
    assert (chosen.current, chosen.target, chosen.notes) == ("R11", "R10", ())
    # by when each release was first deployed, not by name
    assert choose(hist, everywhere("R10", "R2", "R10")).target == "R2"
    with pytest.raises(PlaybookError, match="no successfully deployed release of 'shop' is older than the live R2"):
        choose(hist, everywhere("R2", "R2"))


def test_a_newer_release_a_host_lacks_is_skipped_and_said(hist):
    live = {("sync", "w1"): Live("R11", ("R2", "R10", "R11")), ("sync", "w2"): Live("R11", ("R2", "R11"))}
    chosen = choose(hist, live)
    assert chosen.target == "R2"
    assert chosen.notes == ("R10 is not on w2: going back to R2, the newest release every host has",)
    live[("sync", "w2")] = Live("R11", ("R11",))
    with pytest.raises(RollbackRefused) as err:
        choose(hist, live)
    assert "no release older than R11 is on every host (R10 is not on w2; R2 is not on w2)" in str(err.value)
    assert err.value.hosts == ["w2"]


def test_to_is_any_successful_release_not_already_live_everywhere(hist):
    live = {("sync", "w1"): Live("R11", ("R2", "R10", "R11")), ("sync", "w2"): Live("R2", ("R2", "R10"))}
    chosen = choose(hist, live, to="R10")
    assert (chosen.current, chosen.target) == ("R11", "R10")
    assert chosen.notes == ("w2 serves R2, older than R10: it moves forward to R10",)
    with pytest.raises(PlaybookError, match="already live on every host"):
        choose(hist, everywhere("R10", "R10"), to="R10")
    with pytest.raises(PlaybookError, match="R11 was never deployed successfully"):
        choose(hist, live, to="R11")


def test_a_live_release_the_history_does_not_know_needs_to(hist):
    live = {("sync", "w1"): Live("R11"), ("sync", "w2"): Live("hotfix", ("hotfix", "R10"))}
    with pytest.raises(PlaybookError, match=r"live release of w2 \(releases/hotfix\) is not in the history"):
        choose(hist, live)
    assert choose(hist, live, to="R10").current == "hotfix"
    with pytest.raises(PlaybookError, match="no host has a live release"):
        choose(hist, everywhere(""))


def test_the_reader_reads_every_releases_step_at_once_and_unreadable_hosts_refuse():
    sync = Step("sync", "rsync", "web", {"src": "x", "dest": "{{ app_root }}", "releases": True})
    pb = Playbook(
        "pb.yml",
        "shop",
        {},
        {"web": Fleet("web", "web", serial=1, max_fail_percentage=0), "db": Fleet("db", "db")},
        (sync, Step("flush", "cache_clear", "web", {"command": ["true"]})),
    )
    reader = live_state_playbook(pb, releases_steps=[sync])
    assert reader is not None and [(s.id, s.module, dict(s.args)) for s in reader.steps] == [
        ("live_sync", "release_state", {"dest": "{{ app_root }}"})
    ]
    assert list(reader.fleets) == ["web"] and reader.fleets["web"].serial is None
    assert reader.fleets["web"].max_fail_percentage is None
    assert live_state_playbook(pb, releases_steps=[]) is None

    def read(host, status, **outputs):
        return StepResult("live_sync", host, status, "connection refused", Plan.no_change(""), outputs)

    summary = RunSummary("r", "pb.yml", "plan", ["w1", "w2"], ["live_sync"])
    summary.results = [read("w1", Status.OK, current="R1", releases=["R1"]), read("w2", Status.UNREACHABLE)]
    with pytest.raises(RollbackRefused) as err:
        live_from(summary)
    assert err.value.hosts == ["w2"] and "  w2  sync: unreachable: connection refused" in str(err.value)
    summary.results = summary.results[:1]
    assert live_from(summary) == {("sync", "w1"): Live("R1", ("R1",))}
