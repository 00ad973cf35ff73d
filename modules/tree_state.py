"""`tree_state`: how a host's deployed tree differs from the tree recorded when it was deployed.

`playbook drift` plans this on every host of each `rsync` step (engine/record/drift.py), over
the read-only connection. With the host's recorded tree (`expect`, the `tree_digest` the rsync
step recorded there) it is the no-change plan's own probe: the recorded canonical listing goes
on stdin and the host answers with the lines found on one side only, so a host that did not
drift answers with nothing. Without one it reads where `current` points. Nothing is written on
the host: the plan is no-change.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from engine.errors import ModuleError
from engine.model.results import Plan
from engine.module import ApplyContext, PlanContext, arg, register
from modules._support.manifest import Entry, ExcludeRules, compare_trees
from modules._support.releases import RELEASE_INFO, delta_probe, read_releases
from modules._support.tree_record import load_listing

__all__ = ["TreeState", "TreeStateArgs", "MAX_PATHS"]

#: paths listed per kind of difference and host; the counts are always whole
MAX_PATHS = 200


@dataclass(frozen=True)
class TreeStateArgs:
    dest: str = arg(doc="The rsync step's `dest` (with `releases`, the deploy root holding `current`).")
    releases: bool = arg(False, doc="The rsync step's `releases`: compare the release `current` points at.")
    exclude: tuple[str, ...] = arg((), doc="The rsync step's `exclude`: paths left out of the comparison.")
    shared: tuple[str, ...] = arg((), doc="The rsync step's `shared`: paths left out of the comparison.")
    delete: bool = arg(True, doc="The rsync step's `delete`: without it, files only on the host are not drift.")
    expect: dict[str, str] = arg(
        default_factory=dict,
        doc="Host name to the `tree_digest` recorded there; a host not listed only has its `current` read.",
    )


@register
class TreeState:
    """Compares a host's deployed tree with the tree recorded when it was deployed and reads
    where `current` points (used by `playbook drift`)."""

    name: ClassVar[str] = "tree_state"
    Args: ClassVar[type] = TreeStateArgs
    summary: ClassVar[str] = "compare a host's deployed tree with its recorded one (used by drift)"
    outputs: ClassVar[dict[str, str]] = {
        "current": "the release `current` points at; empty without releases or when it points nowhere under `releases/`",
        "target": "where the `current` symlink points, as written",
        "recorded": "`found` when the recorded tree was compared, `missing` when it is not in the state dir, `none` when not asked",
        "missing": "paths of the recorded tree absent on the host",
        "added": "paths on the host the recorded tree does not have",
        "changed": "[path, what differs] for paths that are on both sides but differ",
        "counts": "how many paths are missing, added and changed (the lists stop at 200)",
    }
    controller_only: ClassVar[bool] = False
    examples: ClassVar[str] = """\
- id: drift_sync
  module: tree_state
  fleet: web
  args:
    dest: /var/www/app
    releases: true
    expect: {web1: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}
"""

    def plan(self, ctx: PlanContext, args: TreeStateArgs) -> Plan:
        dest = posixpath.normpath(args.dest)
        digest = args.expect.get(ctx.host or "", "")
        recorded = load_listing(ctx.state_dir, digest) if digest else None
        outputs: dict[str, Any] = {"missing": [], "added": [], "changed": [], "counts": [0, 0, 0]}
        if recorded is None:
            state = read_releases(ctx.conn, dest, timeout=ctx.remaining()) if args.releases else None
            outputs["recorded"] = "missing" if digest else "none"
            outputs["current"] = (state.current_release or "") if state else ""
            outputs["target"] = (state.current_target or "") if state else ""
            return Plan.no_change("tree not compared", outputs=outputs, fingerprint=dict(outputs))
        expected, lines, payload = recorded
        state, tree = delta_probe(
            ctx, dest, expected, releases=args.releases, timeout=ctx.remaining(), listing=(lines, payload)
        )
        if state.current_blocked:
            raise ModuleError(f"'{dest}/current' exists and is not a symlink", path=ctx.host or "")
        outputs.update(recorded="found", current=state.current_release or "", target=state.current_target or "")
        if tree is not None and not state.extra.get("delta"):  # the host answered nothing: as recorded
            return Plan.no_change("as recorded", outputs=outputs, fingerprint={"counts": outputs["counts"]})
        shared = tuple(p.strip("/") for p in args.shared)
        if tree is not None and shared:  # as rsync plans: directories only holding a shared link are layout
            holders = {"/".join(p.split("/")[:n]) for p in shared for n in range(1, p.count("/") + 1)}
            tree = {k: v for k, v in tree.items() if k not in holders or k in expected}
        delta = compare_trees(
            expected,
            tree,
            delete=args.delete,
            excludes=ExcludeRules(tuple(args.exclude)),
            ignore=(RELEASE_INFO, *shared) if args.releases else shared,
        )
        host_tree = tree or {}
        outputs["missing"] = list(delta.created[:MAX_PATHS])
        outputs["added"] = list(delta.deleted[:MAX_PATHS])
        outputs["changed"] = [[p, _differs(expected[p], host_tree[p])] for p in delta.updated[:MAX_PATHS]]
        outputs["counts"] = [len(delta.created), len(delta.deleted), len(delta.updated)]
        if tree is None:
            outputs["missing_tree"] = True
        why = "as recorded" if not delta.changed else f"{delta.changed} path(s) differ from the recorded tree"
        return Plan.no_change(why, outputs=outputs, fingerprint={"counts": outputs["counts"]})

    def apply(self, ctx: ApplyContext, plan: Plan) -> None:  # pragma: no cover - a plan here never changes
        return None


_KINDS = {"f": "file", "d": "directory", "l": "symlink", "o": "special file"}


def _differs(want: Entry, have: Entry) -> str:
    """What differs between the recorded entry and the host's: `size 12 -> 14, mtime ... -> ...`."""
    if want.kind != have.kind:
        return f"{_KINDS.get(want.kind, want.kind)} -> {_KINDS.get(have.kind, have.kind)}"
    if want.kind == "l":
        return f"link target {want.target} -> {have.target}"
    parts = []
    if want.kind == "f" and want.size != have.size:
        parts.append(f"size {want.size} -> {have.size}")
    if want.kind == "f" and want.mtime != have.mtime:
        parts.append(f"mtime {_when(want.mtime)} -> {_when(have.mtime)}")
    if want.mode & 0o7777 != have.mode & 0o7777:
        parts.append(f"mode {want.mode & 0o7777:o} -> {have.mode & 0o7777:o}")
    return ", ".join(parts) or "differs"


def _when(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
