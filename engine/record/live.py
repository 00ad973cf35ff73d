"""What is live on the hosts, read before a rollback, and the release a rollback goes back to.

The history says which runs finished, not what the hosts serve: a deploy interrupted after its
transfers has switched `current` everywhere and is still recorded as interrupted. So
`playbook rollback` first reads, on every host of each releases-layout `rsync` step, where
`current` points and which releases are on disk (`release_state`, a read-only plan), and
chooses from that:

- the release to leave is the newest one live on any host;
- by default it goes to the newest successfully deployed release *older* than that (by when it
  was first deployed) that is on every host, noting the newer ones some hosts lack;
- `--to` names any successfully deployed release that is not already live everywhere.

After the run, `RollbackReport` says which hosts moved, which already served the target, and,
when a failure stopped the rollout, which did not move and what they still serve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from engine.errors import PlaybookError, RollbackRefused
from engine.model.config import Playbook, Step
from engine.model.results import RunSummary, Status
from engine.record.history import History, RunRecord

__all__ = [
    "Live",
    "LiveTarget",
    "live_state_playbook",
    "live_from",
    "choose_target",
    "LIVE_STEP_PREFIX",
    "RollbackReport",
    "rollback_report",
]

#: The read steps are named `live_<rsync step id>`.
LIVE_STEP_PREFIX = "live_"


@dataclass(frozen=True)
class Live:
    """One host's deploy root of one rsync step: the release `current` points at ("" for
    none) and the complete releases on disk."""

    current: str
    releases: tuple[str, ...] = ()


@dataclass(frozen=True)
class LiveTarget:
    """The choice: the newest live release (`current`), the target, and notes for the user."""

    current: str
    target: str
    notes: tuple[str, ...] = ()


def live_state_playbook(playbook: Playbook, *, releases_steps: list[Step]) -> Playbook | None:
    """A playbook that only reads where `current` points and which releases are there, on every
    host of each of `releases_steps` (rsync steps with `releases: true`); None when there are
    none (then the history alone says what is live)."""
    if not releases_steps:
        return None
    steps = tuple(
        Step(
            f"{LIVE_STEP_PREFIX}{s.id}",
            "release_state",
            s.fleet,
            {"dest": s.args["dest"]},
            location=s.location,
            args_locations={k: v for k, v in s.args_locations.items() if k[:1] == ("dest",)},
            description=f"read the live release of {s.id}",
        )
        for s in releases_steps
    )
    used = {s.fleet for s in steps}
    # every host read at once and every unreadable one reported: no batches, no failure budget
    fleets = {n: replace(f, serial=None, max_fail_percentage=None) for n, f in playbook.fleets.items() if n in used}
    return replace(playbook, steps=steps, fleets=fleets, sources={})


def live_from(summary: RunSummary) -> dict[tuple[str, str], Live]:
    """The live state per (rsync step id, host) from a plan of `live_state_playbook`. Refused
    (`RollbackRefused`), naming each host and why, when any host could not be read: going back
    from a guess is what this is here to prevent."""
    live: dict[tuple[str, str], Live] = {}
    bad: list[tuple[str, str, str]] = []
    for r in summary.results:
        if r.host is None or not r.step.startswith(LIVE_STEP_PREFIX):
            continue
        step = r.step[len(LIVE_STEP_PREFIX) :]
        if r.status != Status.OK:
            bad.append((r.host, step, f"{r.status.value}: {r.message}"))
            continue
        outs = r.outputs
        live[(step, r.host)] = Live(str(outs.get("current") or ""), tuple(str(x) for x in outs.get("releases") or ()))
    if bad:
        lines = "\n".join(f"  {host}  {step}: {why}" for host, step, why in sorted(bad))
        hosts = sorted({h for h, _, _ in bad})
        raise RollbackRefused(
            f"cannot roll back: the live release of {len(hosts)} host(s) could not be read; nothing was "
            f"changed on any host:\n{lines}\nbring them back, or leave them out with --limit",
            hosts=hosts,
        )
    return live


def choose_target(
    history: History, name: str, ok: list[RunRecord], live: Mapping[tuple[str, str], Live], to: str | None
) -> LiveTarget:
    """The release to go back to from what `live` says the hosts serve (module docstring).
    `ok` are the playbook's successful runs; a release's age is when a run first deployed it."""
    first: dict[str, float] = {}
    for r in history.runs(name, limit=10_000):
        if r.release_id:
            first[r.release_id] = min(first.get(r.release_id, r.started), r.started)
    successful = {r.release_id for r in ok if r.release_id}
    on = {key: v.current for key, v in live.items() if v.current}
    # a release the history does not know was deployed from elsewhere: take it as the newest
    current = max(on.values(), key=lambda rel: (first.get(rel, float("inf")), rel)) if on else ""
    if to is not None:
        if to not in successful:
            recent = ", ".join(sorted(successful, key=lambda rel: first[rel])[-5:])
            raise PlaybookError(f"release {to} was never deployed successfully by '{name}' (recent: {recent})")
        if live and all(v.current == to for v in live.values()):
            raise PlaybookError(f"release {to} is already live on every host")
        return LiveTarget(current, to, tuple(_moving_forward(live, to, first)))
    if not on:
        raise PlaybookError(f"no host has a live release of '{name}': nothing to roll back (name one with --to)")
    unknown = sorted({(host, rel) for (_step, host), rel in on.items() if rel not in first})
    if unknown:
        shown = ", ".join(f"{host} (releases/{rel})" for host, rel in unknown[:5])
        raise PlaybookError(
            f"the live release of {shown} is not in the history of '{name}', so which release is older is "
            f"unknown: name the release to return to with --to"
        )
    older = sorted((rel for rel in successful if first[rel] < first[current]), key=lambda rel: first[rel], reverse=True)
    if not older:
        raise PlaybookError(
            f"no successfully deployed release of '{name}' is older than the live {current}: nothing earlier to go back to"
        )
    lacking: list[str] = []
    for rel in older:
        without = sorted({host for (_step, host), v in live.items() if rel not in v.releases})
        if not without:
            skipped = tuple(f"{note}: going back to {rel}, the newest release every host has" for note in lacking)
            return LiveTarget(current, rel, skipped + tuple(_moving_forward(live, rel, first)))
        lacking.append(f"{rel} is not on {', '.join(without)}")
    raise RollbackRefused(
        f"no release older than {current} is on every host ({'; '.join(lacking)}): name one with --to "
        f"(rebuilt from its recorded artifact where it is missing), or leave those hosts out with --limit",
        hosts=sorted({host for (_step, host), v in live.items() if older[0] not in v.releases}),
    )


def _moving_forward(live: Mapping[tuple[str, str], Live], target: str, first: Mapping[str, float]) -> list[str]:
    """Notes for hosts that serve a release older than the target: they move forward to it."""
    age = first.get(target, 0.0)
    behind = sorted(
        {(host, v.current) for (_step, host), v in live.items() if v.current and first.get(v.current, age) < age}
    )
    return [f"{host} serves {rel}, older than {target}: it moves forward to {target}" for host, rel in behind]


@dataclass(frozen=True)
class RollbackReport:
    """Which hosts a rollback run moved to `target`: `moved` (a switch changed there),
    `already` (every switch found the target live), `failed` (any step failed or was
    unreachable), `not_moved` (planned to move, did not), `was` (what each host served before),
    and `stopped`, why new work stopped ("" when it did not)."""

    target: str
    moved: list[str]
    already: list[str]
    failed: list[str]
    not_moved: list[str]
    stopped: str = ""
    was: Mapping[str, str] = field(default_factory=dict)
    failures: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        def hosts(names: list[str]) -> str:
            return ", ".join(names) if names else "none"

        parts = [f"moved {len(self.moved)} host(s) to {self.target}: {hosts(self.moved)}"]
        if self.already:
            parts.append(f"already on it: {hosts(self.already)}")
        if self.not_moved:
            still = ", ".join(f"{h} (still {self.was[h]})" if self.was.get(h) else h for h in self.not_moved)
            parts.append(f"not moved: {still}")
        text = "; ".join(parts)
        if self.failed or self.stopped:
            why = "; ".join(f"{h} failed: {self.failures[h]}" for h in self.failed if h in self.failures)
            head = f"rollback to {self.target} stopped" + (f" ({self.stopped})" if self.stopped else "")
            return f"{head}: {why}\n{text}" if why else f"{head}\n{text}"
        return text


def rollback_report(
    target: str,
    live: Mapping[tuple[str, str], Live],
    switch_steps: set[str],
    summary: RunSummary,
    preview: RunSummary | None = None,
) -> RollbackReport:
    """The `RollbackReport` of a rollback run (`summary`) whose `switch_steps` move hosts to
    `target`; `preview` is the plan made before it (which hosts were to move)."""
    switched: dict[str, set[Status]] = {}
    failures: dict[str, str] = {}
    for r in summary.results:
        if r.host is None:
            continue
        if r.step in switch_steps:
            switched.setdefault(r.host, set()).add(r.status)
        if r.failed and r.host not in failures:
            failures[r.host] = f"{r.step}: {r.message}".replace("\n", " ")
    moved = sorted(h for h, st in switched.items() if Status.CHANGED in st)
    already = sorted(h for h, st in switched.items() if st == {Status.OK})
    if preview is not None:
        planned = {r.host for r in preview.results if r.host and r.step in switch_steps and r.status != Status.OK}
    else:
        planned = set(summary.hosts)
    not_moved = sorted(planned - set(moved) - set(already))
    # the budget's own words would say "0%": a rollback has none, its first failure stops it
    stopped = (
        "interrupted" if summary.interrupted else ("a rollback stops at its first failure" if summary.aborted else "")
    )
    was: dict[str, str] = {}
    for (_step, host), v in sorted(live.items()):
        was.setdefault(host, v.current)
    return RollbackReport(
        target,
        moved,
        already,
        sorted(failures),
        not_moved,
        stopped=stopped,
        was=was,
        failures=failures,
    )
