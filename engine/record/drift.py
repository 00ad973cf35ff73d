"""`playbook drift`: how every host differs from what the history says was deployed there.

For each `rsync` step, the newest successful result on each host says which release went live
(`release_name`; a rollback's `release_switch` result moves it) and which tree it was
(`tree_digest`, a listing in the state dir: modules/_support/tree_record.py). A generated
playbook of `tree_state` steps (`drift_playbook`) then reads, in one read-only probe per host and
step, where `current` points and how the live tree differs from the recorded one; it is planned
like any plan, all hosts at once. `drift_report` turns the results into a `DriftReport`: per
host, what differs (the release, files missing, added or changed, with what differs), hosts
never deployed by the playbook, and hosts that could not be read. Nothing is written anywhere.

Exit status (`DriftReport.exit_code`): 0 no drift, 2 drift, 1 when any host could not be read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from engine.model.config import CONTROLLER, Fleet, Playbook, Step
from engine.model.results import Change, RunSummary, Status
from engine.record.drift_pinned import Pin, differences, pinned_steps
from engine.record.history import History

__all__ = [
    "DRIFT_STEP_PREFIX",
    "Deployed",
    "Finding",
    "HostDrift",
    "DriftReport",
    "DriftReads",
    "recorded_deploys",
    "drift_playbook",
    "drift_report",
]

#: The read steps are named `drift_<rsync step id>`.
DRIFT_STEP_PREFIX = "drift_"
_OK = ("ok", "changed")


@dataclass(frozen=True)
class Deployed:
    """What the history says one rsync step deployed on one host: the release (empty without
    the releases layout), its recorded tree (`tree_digest`, empty when the run predates
    recorded trees), the run that did it and when."""

    release: str
    tree_digest: str
    run_id: str
    when: float
    by: str = "run"  # "run" or "rollback"
    what: str = ""  # for a recorded image, colour or Helm value: which


@dataclass(frozen=True)
class Finding:
    """One difference: `what` is `release`, `missing`, `added`, `changed`, `tree`
    (the live tree or its record is not there) or `unrecorded`; `path` names the file."""

    what: str
    detail: str
    path: str = ""


@dataclass(frozen=True)
class HostDrift:
    """One host and rsync step: `status` is `ok`, `drift` or `error` (could not be read)."""

    host: str
    step: str
    status: str
    recorded: Deployed | None = None
    live_release: str = ""
    findings: tuple[Finding, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "step": self.step,
            "status": self.status,
            "recorded": None if self.recorded is None else dict(self.recorded.__dict__),
            "live_release": self.live_release,
            "counts": dict(self.counts),
            "findings": [dict(f.__dict__) for f in self.findings],
            "error": self.error,
        }


@dataclass(frozen=True)
class DriftReport:
    """Every host's `HostDrift` for one playbook, sorted by host then step."""

    playbook: str
    hosts: tuple[HostDrift, ...]

    @property
    def exit_code(self) -> int:
        if any(h.status == "error" for h in self.hosts):
            return 1
        return 2 if any(h.status == "drift" for h in self.hosts) else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook,
            "exit_code": self.exit_code,
            "drifted": sorted({h.host for h in self.hosts if h.status == "drift"}),
            "errors": sorted({h.host for h in self.hosts if h.status == "error"}),
            "hosts": [h.to_dict() for h in self.hosts],
        }


def recorded_deploys(history: History, name: str, steps: Iterable[Step]) -> dict[tuple[str, str], Deployed]:
    """(rsync step id, host) -> the newest successful deploy of that step there, a rollback's
    switch (`rollback_<id>`) included: it went back to a release, whose tree is the one that
    release's run recorded on the host."""
    ids = {s.id for s in steps}
    found: dict[tuple[str, str], Deployed] = {}
    trees: dict[tuple[str, str, str], str] = {}  # (step, host, release) -> tree digest, newest first
    switched: dict[tuple[str, str], tuple[str, str, float]] = {}  # rollbacks newer than any deploy
    for run in history.runs(name, limit=10_000):
        for res in history.results(run.run_id):
            host, step, outs = res["host"], res["step"], res["outputs"]
            if host is None or res["status"] not in _OK:
                continue
            if step in ids:
                release = str(outs.get("release_name") or "")
                trees.setdefault((step, host, release), str(outs.get("tree_digest") or ""))
                if (step, host) not in found and (step, host) not in switched:
                    found[(step, host)] = Deployed(release, str(outs.get("tree_digest") or ""), run.run_id, run.started)
            elif step.startswith("rollback_") and step[len("rollback_") :] in ids and outs.get("release"):
                key = (step[len("rollback_") :], host)
                if key not in found and key not in switched:
                    switched[key] = (str(outs["release"]), run.run_id, run.started)
    for key, (release, run_id, when) in switched.items():
        found[key] = Deployed(release, trees.get((*key, release), ""), run_id, when, by="rollback")
    return found


@dataclass(frozen=True)
class DriftReads:
    """The generated read-only playbook (None: nothing to compare) and, per generated step
    that is pinned to recorded values (engine/record/drift_pinned.py), the pins it compares."""

    playbook: Playbook | None
    pinned: Mapping[str, list[Pin]] = field(default_factory=dict)


def drift_playbook(
    playbook: Playbook, recorded: Mapping[tuple[str, str], Deployed], pins: Iterable[Pin] = ()
) -> DriftReads:
    """A playbook that only reads: on every host of each rsync step, where `current` points and
    how the live tree differs from the recorded one; and each of `pins` planned pinned to its
    record. Its playbook is None when there is nothing to compare."""
    rsyncs = [s for s in playbook.steps if s.module == "rsync"]
    extra, pin_fleets, pinned = pinned_steps(playbook, pins, DRIFT_STEP_PREFIX)
    if not rsyncs and not extra:
        return DriftReads(None)
    steps = []
    for s in rsyncs:
        args = {k: s.args[k] for k in ("dest", "releases", "exclude", "shared", "delete") if k in s.args}
        args["expect"] = {h: d.tree_digest for (sid, h), d in sorted(recorded.items()) if sid == s.id and d.tree_digest}
        steps.append(
            Step(
                f"{DRIFT_STEP_PREFIX}{s.id}",
                "tree_state",
                s.fleet,
                args,
                location=s.location,
                args_locations={k: v for k, v in s.args_locations.items() if k[:1] and k[0] in args},
                description=f"compare {s.id} with its recorded tree",
            )
        )
    used = {s.fleet for s in steps}
    # every host read at once and every unreadable one reported: no batches, no failure budget
    fleets: dict[str, Fleet] = {
        n: replace(f, serial=None, max_fail_percentage=None, lock=False)
        for n, f in playbook.fleets.items()
        if n in used
    }
    fleets.update(pin_fleets)
    return DriftReads(replace(playbook, steps=(*steps, *extra), fleets=fleets, sources={}), pinned)


def drift_report(
    playbook: str,
    summary: RunSummary,
    recorded: Mapping[tuple[str, str], Deployed],
    pinned: Mapping[str, list[Pin]] | None = None,
) -> DriftReport:
    """The `DriftReport` of a plan of `drift_playbook` (`summary`) against `recorded` and the
    pins of its `pinned` steps."""
    out: list[HostDrift] = []
    for r in summary.results:
        if r.step in (pinned or {}):
            out.append(_pinned_drift(r, (pinned or {})[r.step]))
            continue
        if r.host is None or not r.step.startswith(DRIFT_STEP_PREFIX):
            continue
        step = r.step[len(DRIFT_STEP_PREFIX) :]
        deployed = recorded.get((step, r.host))
        if r.status != Status.OK:
            out.append(HostDrift(r.host, step, "error", deployed, error=f"{r.status.value}: {r.message}"))
            continue
        outs = r.outputs
        live = str(outs.get("current") or "")
        if deployed is None:
            why = f"never deployed by this playbook (no successful {step} in the history)"
            out.append(HostDrift(r.host, step, "drift", None, live, (Finding("unrecorded", why),)))
            continue
        findings: list[Finding] = []
        if deployed.release and live != deployed.release:
            target = str(outs.get("target") or "")
            now = f"releases/{live}" if live else (target or "nothing")
            findings.append(Finding("release", f"current is {now}, the history says releases/{deployed.release}"))
        if not deployed.tree_digest:
            findings.append(
                Finding("tree", "no tree recorded for this deploy (run before trees were recorded): files not compared")
            )
        elif outs.get("recorded") == "missing":
            findings.append(
                Finding("tree", f"the recorded tree {deployed.tree_digest[:12]} is missing or altered in the state dir")
            )
        elif outs.get("missing_tree"):
            findings.append(Finding("tree", "the deployed tree is not there"))
        else:
            findings += [Finding("missing", "recorded, not on the host", str(p)) for p in outs.get("missing") or ()]
            findings += [Finding("added", "on the host, not recorded", str(p)) for p in outs.get("added") or ()]
            findings += [Finding("changed", str(why), str(p)) for p, why in outs.get("changed") or ()]
        counts = dict(zip(("missing", "added", "changed"), [int(n) for n in outs.get("counts") or (0, 0, 0)]))
        # files not compared is no drift by itself: the release still is
        drifted = (
            any(f.what != "tree" for f in findings)
            or outs.get("recorded") == "missing"
            or bool(outs.get("missing_tree"))
        )
        out.append(HostDrift(r.host, step, "drift" if drifted else "ok", deployed, live, tuple(findings), counts))
    return DriftReport(playbook, tuple(sorted(out, key=lambda h: (h.host, h.step))))


def _pinned_drift(r: Any, pins: list[Pin]) -> HostDrift:
    """The `HostDrift` of one pinned step on one host (or the controller)."""
    pin = next((p for p in pins if p.host == r.host), pins[0])
    what = {"selector": "active colour", "image": f"image of {pin.deployment}", "values": "image"}[pin.kind]
    shown = pin.tag or pin.value if pin.kind == "values" else pin.value
    deployed = Deployed("", "", pin.run_id, pin.when, pin.by, what=f"{what} {shown}")
    host = r.host or CONTROLLER
    if r.failed or r.status == Status.UNREACHABLE:
        return HostDrift(host, pin.step, "error", deployed, error=f"{r.status.value}: {r.message}")
    if r.plan is None or r.plan.change != Change.WILL_CHANGE:
        return HostDrift(host, pin.step, "ok", deployed)
    found = tuple(Finding(pin.kind, detail, path) for path, detail in differences(pin.kind, r.plan))
    return HostDrift(host, pin.step, "drift", deployed, findings=found)
