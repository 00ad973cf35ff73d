"""`playbook rollback`: return a fleet to a recorded release.

Which release is live and which one to go back to come from the hosts (engine/record/live.py);
the history says what each release was made of. Rolling back to an earlier release undoes every
run after it. If those runs applied migrations, the rollback is refused (the seed team's
"Automatic-with-migrations" incident: code rolled back, migration left behind) unless
`--with-migrations`, which first runs their `down` commands, newest first. Then each
releases-layout `rsync` step's `current` is switched back where that release is still on the
host and built again from the recorded artifact where `keep` removed it (see
modules/recorded_artifact.py), each canary Deployment (`canary_switch` deploy/set_image/revert) is
reverted to the image it had in that release, each `helm_bump` field is set back to the tag
(and digest) recorded then, and the `cache_clear` steps run again, with the outputs the
release's run recorded.

The rollback is itself an ordinary plan/run of a generated playbook: same locks, parallelism,
events and history (recorded with the target release id, so it becomes "current"). Its fleets
have no failure budget: the first host that fails stops the rollout.

Longer than ~400 lines: choosing the target, refusing over migrations and building each
module's undo step are one decision sharing its state; the per-module undo steps are the next
to move out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from engine.errors import PlaybookError, RollbackRefused
from engine.model.config import CONTROLLER, Fleet, Playbook, Source, Step
from engine.record.history import History, RunRecord
from engine.record.live import Live, choose_target

__all__ = [
    "RollbackPlan",
    "plan_rollback",
    "releases_steps",
    "without_budget",
    "SWITCH_MODULES",
    "RollbackRefused",
    "Migration",
]


@dataclass
class Migration:
    run: RunRecord
    step: str
    host: str | None
    name: str
    down: str


@dataclass
class RollbackPlan:
    """What a rollback does: from `current` (the newest release live on any host, or the
    history's newest when nothing says what is live) to `target`, undoing `undone` runs, and the
    generated `playbook` that does it."""

    current: str
    target: str
    undone: list[RunRecord]
    migrations: list[Migration] = field(default_factory=list)
    playbook: Playbook | None = None
    # step id -> host (None: controller) -> outputs recorded when the target release was live
    images: dict[str, dict[str | None, dict]] = field(default_factory=dict)
    # source name -> outputs of `sources.<name>` in the run that deployed the target release
    artifacts: dict[str, dict] = field(default_factory=dict)
    # (step, host) -> what the runs of the target release recorded, newest first (npm `version`
    # and `integrity`, S3 digests, `steps.sync.release_name`...): the generated playbook renders
    # with them (`RunOptions.recorded`) for the steps it does not run, and its sources add them
    recorded: dict[tuple[str, str | None], dict] = field(default_factory=dict)
    # (rsync step id, host) -> what that host served when the rollback was planned
    live: dict[tuple[str, str], Live] = field(default_factory=dict)
    # for the user: newer releases some hosts lack, hosts that move forward
    notes: list[str] = field(default_factory=list)

    def live_text(self) -> str:
        """The live release, or which hosts serve which when they differ."""
        by_release: dict[str, set[str]] = {}
        for (_step, host), v in self.live.items():
            by_release.setdefault(v.current or "no release", set()).add(host)
        if len(by_release) <= 1:
            return next(iter(by_release), self.current) if self.live else self.current
        return "; ".join(
            f"{rel} on {', '.join(sorted(hosts))}" for rel, hosts in sorted(by_release.items(), key=lambda kv: kv[0])
        )


_IMAGE_STEPS = {"canary_switch": ("set_image", "revert"), "helm_bump": None}


def _recorded_images(playbook: Playbook, history: History, ok: list[RunRecord], since: float) -> dict:
    """For each image-setting step (canary_switch set_image/revert, helm_bump): the outputs it
    recorded in the newest successful run at or before the target release, per host."""
    wanted = {s.id for s in playbook.steps if s.module in _IMAGE_STEPS}
    found: dict[str, dict[str | None, dict]] = {}
    for run in sorted((r for r in ok if r.started <= since), key=lambda r: r.started, reverse=True):
        for res in history.results(run.run_id):
            outs = res.get("outputs") or {}
            if res["step"] in wanted and res["status"] in ("ok", "changed") and (outs.get("image") or outs.get("tag")):
                found.setdefault(res["step"], {}).setdefault(res["host"], outs)
    return found


def _recorded_outputs(history: History, ok: list[RunRecord], target: str) -> dict[tuple[str, str | None], dict]:
    """Every (step, host)'s outputs in the successful runs of the target release, the newest
    run's first. A source a rollback could not fetch (`available: false`) is not the record."""
    found: dict[tuple[str, str | None], dict] = {}
    for run in sorted((r for r in ok if r.release_id == target), key=lambda r: r.started, reverse=True):
        for res in history.results(run.run_id):
            outs = res.get("outputs") or {}
            if res["status"] not in ("ok", "changed") or (
                res["step"].startswith("sources.") and outs.get("available") is False
            ):
                continue
            found.setdefault((res["step"], res["host"]), outs)
    return found


def _releases(history: History, name: str) -> list[RunRecord]:
    """Successful runs of the playbook, oldest first."""
    runs = [r for r in history.runs(name, limit=10_000) if r.status == "ok" and r.release_id]
    return sorted(runs, key=lambda r: r.started)


def releases_steps(playbook: Playbook) -> list[Step]:
    """The playbook's `rsync` steps with the releases layout: the ones whose `current` a
    rollback reads and switches."""
    return [s for s in playbook.steps if s.module == "rsync" and _truthy(s.args.get("releases"))]


def plan_rollback(
    playbook: Playbook,
    history: History,
    *,
    to: str | None,
    with_migrations: bool,
    live: dict[tuple[str, str], Live] | None = None,
) -> RollbackPlan:
    """The rollback of `playbook` from its `history`: to `to`, or by default to the release
    before. With `live` (what each host's `current` points at, engine/record/live.py) the
    release to leave and the default target follow the hosts; without it (no releases-layout
    step) the history's newest successful release is taken as live."""
    ok = _releases(history, playbook.name)
    if not ok:
        raise PlaybookError(f"no successful run of '{playbook.name}' in the history: nothing to roll back")
    if live:
        chosen = choose_target(history, playbook.name, ok, live, to)
        return _plan_to(playbook, history, ok, chosen.current, chosen.target, with_migrations, live, list(chosen.notes))
    current = ok[-1].release_id or ""
    order: list[str] = []
    for r in ok:
        if r.release_id in order:
            order.remove(r.release_id)
        order.append(r.release_id or "")
    if to is None:
        if len(order) < 2:
            raise PlaybookError(
                f"'{playbook.name}' has only one recorded release ({current}): nothing earlier to go back to"
            )
        target = order[-2]
    else:
        if to not in order:
            known = ", ".join(order[-5:])
            raise PlaybookError(f"release {to} was never deployed successfully by '{playbook.name}' (recent: {known})")
        target = to
    if target == current:
        raise PlaybookError(f"release {target} is already the current release")
    return _plan_to(playbook, history, ok, current, target, with_migrations, {}, [])


def _plan_to(
    playbook: Playbook,
    history: History,
    ok: list[RunRecord],
    current: str,
    target: str,
    with_migrations: bool,
    live: dict[tuple[str, str], Live],
    notes: list[str],
) -> RollbackPlan:
    since = max(r.started for r in ok if r.release_id == target)
    undone = [r for r in history.runs(playbook.name, limit=10_000) if r.started > since and r.release_id != target]
    undone.sort(key=lambda r: r.started, reverse=True)

    migrations: list[Migration] = []
    for run in undone:  # newest run first; within a run, last applied first
        for res in reversed(history.results(run.run_id)):
            outs = res.get("outputs") or {}
            if res["status"] == "changed" and outs.get("migration") and outs.get("action", "up") == "up":
                migrations.append(Migration(run, res["step"], res["host"], outs["migration"], outs.get("down", "")))
    plan = RollbackPlan(current, target, undone, migrations, live=live, notes=notes)
    plan.images = _recorded_images(playbook, history, ok, since)
    recorded = _recorded_outputs(history, ok, target)
    plan.artifacts = {
        sid[len("sources.") :]: outs
        for (sid, host), outs in recorded.items()
        if host is None and sid.startswith("sources.") and outs.get("digest")
    }
    plan.recorded = recorded
    if migrations and not with_migrations:
        lines = "\n".join(
            f"  {m.name} on {m.host or CONTROLLER} (release {m.run.release_id}, step {m.step})" for m in migrations
        )
        raise RollbackRefused(
            f"rolling back to {target} would leave {len(migrations)} migration(s) applied by the releases it undoes:\n"
            f"{lines}\nrun again with --with-migrations to run their down commands first (newest first), "
            f"or revert them yourself"
        )
    plan.playbook = _rollback_playbook(playbook, plan)
    generated = {s.id for s in plan.playbook.steps if not s.id.startswith("sources.")}
    plan.recorded = {k: v for k, v in recorded.items() if k[0] not in generated}
    return plan


def _rollback_playbook(playbook: Playbook, plan: RollbackPlan) -> Playbook:
    fleets: dict[str, Fleet] = dict(playbook.fleets)
    steps: list[Step] = []
    previous: tuple[str, ...] = ()
    groups: dict[tuple[str, str, str], list[Migration]] = {}
    for m in plan.migrations:  # one step per migration, on every host that applied it, in parallel
        groups.setdefault((m.run.run_id, m.step, m.name), []).append(m)
    for i, members in enumerate(groups.values()):
        m = members[0]
        hosts = [x.host for x in members if x.host is not None]
        fleet = CONTROLLER
        if hosts:
            fleet = f"_migration_{i}"
            fleets[fleet] = Fleet(fleet, ",".join(hosts), lock=False)
        original = _find(playbook, m.step)
        args: dict[str, Any] = {"name": m.name, "up": "", "down": m.down, "action": "down"}
        if original is not None:
            for key in ("chdir", "ledger_dir"):
                if key in original.args:
                    args[key] = original.args[key]
        sid = f"migration_down_{i}"
        steps.append(Step(sid, "migrate", fleet, args, needs=previous, description=f"revert {m.name}"))
        previous = (sid,)
    sources: dict[str, Source] = {}
    for s in releases_steps(playbook):
        args, source = _switch_args(playbook, plan, s)
        needs = previous
        if source is not None:
            sources[source.name] = source
            needs = (*previous, f"sources.{source.name}")
        steps.append(
            Step(
                f"rollback_{s.id}",
                "release_switch",
                s.fleet,
                args,
                needs=needs,
                location=s.location,
                description=f"switch {s.id} back to {plan.target}",
            )
        )
    steps += _cache_clears(playbook, {s.id for s in steps} | {f"sources.{n}" for n in sources}, plan.recorded)
    for s in playbook.steps:
        recorded = plan.images.get(s.id)
        if not recorded:
            continue
        action = str(s.args.get("action"))
        if s.module == "canary_switch" and (action in ("set_image", "revert", "deploy") or "{{" in action):
            by_image: dict[tuple, list[str]] = {}
            for host, outs in recorded.items():
                if host is not None and outs.get("image"):
                    by_image.setdefault((outs["image"], outs.get("colour") or ""), []).append(host)
            for i, ((image, colour), hosts) in enumerate(sorted(by_image.items())):
                fleet = f"_rollback_{s.id}_{i}"
                fleets[fleet] = Fleet(fleet, ",".join(sorted(hosts)), lock=False)
                args = {k: v for k, v in s.args.items() if k not in ("to",)}
                args.update({"action": "revert", "image": image})
                if colour:
                    args["colour"] = colour
                steps.append(
                    Step(
                        f"rollback_{s.id}_{i}" if len(by_image) > 1 else f"rollback_{s.id}",
                        "canary_switch",
                        fleet,
                        args,
                        needs=previous,
                        location=s.location,
                        description=f"revert {s.id} to the image of {plan.target}",
                    )
                )
        elif s.module == "helm_bump" and None in recorded:
            outs = recorded[None]
            args = {k: v for k, v in s.args.items() if k not in ("tags", "tag_pattern", "tag_order", "semver_range")}
            if outs.get("tag"):
                args["tag"] = outs["tag"]
            image = str(outs.get("image") or "")
            if "@sha256:" in image:
                args["digest"] = image.split("@", 1)[1]
            args["message"] = f"rollback to {plan.target}: {{image}} in {{file}}"
            steps.append(
                Step(
                    f"rollback_{s.id}",
                    "helm_bump",
                    CONTROLLER,
                    args,
                    needs=previous,
                    location=s.location,
                    description=f"set {s.id}'s image back to the one of {plan.target}",
                )
            )
    if not any(s.module in ("release_switch", "canary_switch", "helm_bump") for s in steps):
        raise PlaybookError(
            f"'{playbook.name}' has no step to roll back (rsync with `releases: true`, canary_switch "
            f"set_image/revert, helm_bump) with a record for release {plan.target}"
        )
    source_steps = tuple(
        Step(
            f"sources.{src.name}",
            src.module,
            CONTROLLER,
            src.args,
            location=src.location,
            description=f"source {src.name}: the bytes of release {plan.target}",
        )
        for src in sources.values()
    )
    # a rollback stops at the first host that fails: going on would spread a half-known state
    fleets = {n: replace(f, max_fail_percentage=0) for n, f in fleets.items()}
    return replace(playbook, steps=source_steps + tuple(steps), fleets=fleets, sources=sources)


def without_budget(playbook: Playbook) -> Playbook:
    """A rollback playbook for planning: every host is planned, however many cannot be rolled
    back, so a refusal can name them all."""
    return replace(playbook, fleets={n: replace(f, max_fail_percentage=None) for n, f in playbook.fleets.items()})


#: the generated steps that move a host to the target release
SWITCH_MODULES = ("release_switch", "canary_switch")


_SOURCE_REF = re.compile(r"\s*\{\{\s*sources\.([A-Za-z_][A-Za-z0-9_-]*)\.path\s*\}\}\s*")
# how each source type is pinned to recorded outputs (argument -> output) when fetched again; a
# local tree is only read, and recorded_artifact compares its digest itself
_PINS = {
    "s3": {"sha256": "digest", "version_id": "version"},
    "npm": {"version": "version", "integrity": "digest"},
    "local": {},
}


def _switch_args(playbook: Playbook, plan: RollbackPlan, step: Step) -> tuple[dict[str, Any], Source | None]:
    """The `release_switch` arguments for a releases-layout rsync step, and the `recorded` source
    that can rebuild the release where `keep` removed it (None when nothing was recorded)."""
    args: dict[str, Any] = {"dest": step.args["dest"], "release": plan.target}
    src = step.args.get("src")
    match = _SOURCE_REF.fullmatch(src) if isinstance(src, str) else None
    name = match.group(1) if match else None
    original = playbook.sources.get(name) if name else None
    recorded = plan.artifacts.get(name) if name else None
    if name is None or original is None or recorded is None:  # no name means no original either
        what = f"source '{name}'" if name else f"its src ({src!r}, not a playbook source)"
        args["unavailable"] = f"{what} has no recorded artifact for release {plan.target}"
        return args, None
    fetch: dict[str, Any] | None = None
    if original.type in _PINS:
        fetch = {"type": original.type, **original.args}
        for key, output in _PINS[original.type].items():
            if recorded.get(output):
                fetch[key] = recorded[output]
    source = Source(
        name,
        "recorded",
        "recorded_artifact",
        {"digest": recorded["digest"], "release": plan.target, "path": recorded.get("path"), "fetch": fetch},
        location=original.location,
    )
    args.update(
        {
            "src": src,
            "unavailable": f"{{{{ sources.{name}.error }}}}",
            "sync": {k: v for k, v in step.args.items() if k not in ("src", "dest", "releases")},
        }
    )
    return args, source


_STEP_REF = re.compile(r"\bsteps\.([A-Za-z_][A-Za-z0-9_-]*)")


def _cache_clears(playbook: Playbook, generated: set[str], recorded: dict[tuple[str, str | None], dict]) -> list[Step]:
    """The playbook's `cache_clear` steps, run again after the switch on the hosts whose
    `current` moved: their `only_if_changed` names the generated switch steps instead of the
    rsync steps. Outputs of steps that do not run in a rollback (`steps.sync.release_name`) are
    the ones the target release's run recorded; a cache_clear reading a step that recorded
    nothing for that release (a step added since) is left out."""
    out: list[Step] = []
    have = {sid for sid, _host in recorded}
    for s in playbook.steps:
        if s.module != "cache_clear":
            continue
        if any(ref not in have for ref in _STEP_REF.findall(repr(dict(s.args)) + repr(s.when or ""))):
            continue
        named = s.args.get("only_if_changed") or ()
        if not isinstance(named, (list, tuple)):
            continue
        mapped = [f"rollback_{sid}" for sid in named if f"rollback_{sid}" in generated]
        if named and len(mapped) != len(named):
            continue
        if not named:  # clears unconditionally: after every switch of its fleet
            mapped = [
                f"rollback_{g.id}"
                for g in playbook.steps
                if g.module == "rsync" and g.fleet == s.fleet and f"rollback_{g.id}" in generated
            ]
            if not mapped:
                continue
        args = dict(s.args)
        if named:
            args["only_if_changed"] = mapped
        sources = tuple(n for n in s.needs if n.startswith("sources.") and n in generated)
        out.append(
            replace(
                s,
                id=f"rollback_{s.id}",
                args=args,
                needs=(*mapped, *sources),
                description=f"{s.description or s.id} after the rollback",
            )
        )
    return out


def _find(playbook: Playbook, step_id: str) -> Step | None:
    for s in playbook.steps:
        if s.id == step_id:
            return s
    return None


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")
