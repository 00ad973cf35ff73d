"""`playbook drift`: how the hosts differ from what the history says was deployed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.api.executing import execute
from engine.api.loading import check
from engine.execute.options import RunOptions, resolve_fleets
from engine.model.config import Loaded

if TYPE_CHECKING:  # imported where used, as every heavy import here
    from engine.record.drift import DriftReport

__all__ = ["drift"]


def drift(loaded: Loaded, options: RunOptions, *, connect: Callable[[str], Any] | None = None) -> DriftReport:
    """How every host differs from what the history says was deployed there
    (engine/record/drift.py): for rsync steps the release `current` points at and the files of
    the live tree against the recorded tree, one read-only probe per host and step, all hosts at
    once (`options.forks`, `options.limit`); for canary Deployments the recorded image and
    active colour, for `helm_bump` the recorded image fields (engine/record/drift_pinned.py).
    Nothing is written on any host, cluster or repository, nor in the history.
    `report.exit_code` is 0 (no drift), 2 (drift) or 1 (a host could not be read). `connect`
    replaces the SSH pool (tests)."""
    from engine.record.drift import DriftReport, drift_playbook, drift_report, recorded_deploys
    from engine.record.drift_pinned import recorded_pins
    from engine.record.history import History

    pb = loaded.playbook
    rsyncs = [s for s in pb.steps if s.module == "rsync"]
    hosts = resolve_fleets(pb, loaded.inventory, options.limit)
    wanted = {(s.id, h) for s in rsyncs for h in hosts.get(s.fleet, [])}
    hist = History(options.state_dir)
    try:
        recorded = recorded_deploys(hist, pb.name, rsyncs, wanted)
        pins = recorded_pins(hist, pb.name, pb)
    finally:
        hist.close()
    reads = drift_playbook(pb, recorded, pins)
    if reads.playbook is None:
        return DriftReport(pb.name, ())
    reading = Loaded(reads.playbook, loaded.inventory)
    check(reading, options.extra_vars, options.limit)
    planning = dataclasses.replace(options, mode="plan", run_id="", release_id="", expected=None, done=None)
    summary = execute(reading, planning, connect=connect)
    return drift_report(pb.name, summary, recorded, reads.pinned)
