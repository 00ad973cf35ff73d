"""release_state against real local directories (LocalConnection): what rollback reads first."""

from __future__ import annotations

import os

from engine.connection.base import ReadOnly
from engine.connection.local import LocalConnection
from engine.model.results import Change
from engine.module import PlanContext, get_module
from modules.release_state import ReleaseStateArgs

MODULE = get_module("release_state")


def read(dest, conn=None):
    ctx = PlanContext(
        conn=ReadOnly(conn or LocalConnection("h1")),
        host="h1",
        step="live_sync",
        vars={},
        run_id="r",
        release_id="",
        state_dir="",
    )
    return MODULE.plan(ctx, ReleaseStateArgs(dest=str(dest)))


def test_reads_current_and_the_complete_releases_only(tmp_path):
    for name in ("R1", "R2", ".R3.partial", "odd name"):
        (tmp_path / "releases" / name).mkdir(parents=True)
    (tmp_path / "releases" / "R2" / "big").write_text("not read")
    os.symlink("releases/R2", tmp_path / "current")
    plan = read(tmp_path)
    assert plan.change is Change.NO_CHANGE and plan.reason == "current is releases/R2"
    assert plan.outputs == {"current": "R2", "target": "releases/R2", "releases": ["R1", "R2", "odd name"]}


def test_no_release_live(tmp_path):
    assert read(tmp_path / "nothing").outputs == {"current": "", "target": "", "releases": []}
    (tmp_path / "current").mkdir()
    plan = read(tmp_path)
    assert plan.outputs["current"] == "" and plan.reason.endswith("current is not a symlink")
    (tmp_path / "current").rmdir()
    os.symlink("/elsewhere", tmp_path / "current")
    assert read(tmp_path).reason == "current points outside " + f"{tmp_path}/releases (/elsewhere)"
