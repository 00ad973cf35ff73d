"""Saved plans: `playbook plan -o plan.json` and `playbook apply plan.json`.

A saved plan records what was reviewed: the playbook and inventory (paths and content hashes),
the options (extra vars, limit, release id), and per (step, host) the intended change, its
reason, its diff and the fingerprint of what the module observed (file manifests, `current`
target, artifact digests, git HEAD, resourceVersions). `apply` refuses a plan whose playbook or
inventory changed, then re-plans read-only and refuses, naming every drifted host and step, when
any fingerprint no longer holds; only then does it apply, checking each step again just before
it changes anything. Secret values never enter the file (they are scrubbed, and secret vars are
read again from their sources at apply time).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import LoadError, PlaybookError, StalePlan
from engine.model.jsonable import json_safe
from engine.model.results import Change, Plan, RunSummary

__all__ = [
    "FORMAT",
    "SavedPlan",
    "save_plan",
    "load_plan",
    "plan_hash",
    "check_files",
    "drift",
    "node_drift",
    "StalePlan",
    "file_hash",
]

FORMAT = "playbook-plan/1"


@dataclass(frozen=True)
class SavedPlan:
    path: str
    playbook: str
    playbook_hash: str
    inventory: str
    inventory_hash: str
    extra_vars: Mapping[str, Any]
    limit: str | None
    release_id: str
    run_id: str
    nodes: Mapping[tuple[str, str | None], Mapping[str, Any]]
    plan_hash: str


def _nodes(summary: RunSummary) -> list[dict[str, Any]]:
    out = []
    for r in summary.results:
        plan = r.plan
        out.append(
            {
                "step": r.step,
                "host": r.host,
                "status": r.status.value,
                "change": plan.change.value if plan else None,
                "reason": r.message,
                "fingerprint": json_safe(dict(plan.fingerprint)) if plan else {},
                "diffs": [d.to_dict() for d in plan.diffs] if plan else [],
            }
        )
    out.sort(key=lambda n: (n["step"], n["host"] or ""))
    return out


def plan_hash(nodes: list[dict[str, Any]]) -> str:
    """A digest of the intended changes and what they were based on."""
    body = json.dumps(
        [(n["step"], n["host"], n["change"], n["fingerprint"], n["diffs"]) for n in nodes], sort_keys=True, default=str
    )
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def file_hash(path: str) -> str:
    with open(path, "rb") as fh:
        return "sha256:" + hashlib.sha256(fh.read()).hexdigest()


def save_plan(
    path: str,
    summary: RunSummary,
    *,
    playbook: str,
    inventory: str,
    extra_vars: Mapping[str, Any],
    secret_names: set[str],
    limit: str | None,
    release_id: str,
    scrubber: Any,
) -> str:
    """Write the plan file (mode 0600) and return its plan hash."""
    nodes = _nodes(summary)
    failed = [n for n in nodes if n["status"] in ("failed", "unreachable")]
    if failed:
        first = failed[0]
        raise PlaybookError(
            f"not saving a plan with failures ({len(failed)}; first: {first['host'] or 'controller'} "
            f"{first['step']}: {first['reason']})"
        )
    doc: dict[str, Any] = {
        "format": FORMAT,
        "created": time.time(),
        "run_id": summary.run_id,
        "playbook": os.path.abspath(playbook),
        "playbook_hash": file_hash(playbook),
        "inventory": os.path.abspath(inventory),
        "inventory_hash": file_hash(inventory),
        "extra_vars": {k: v for k, v in extra_vars.items() if k not in secret_names},
        "secret_vars": sorted(secret_names),
        "limit": limit,
        "release_id": release_id,
        "plan_hash": plan_hash(nodes),
        "nodes": nodes,
    }
    text = scrubber.scrub(json.dumps(doc, indent=2, sort_keys=True, default=str)) + "\n"
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return doc["plan_hash"]


def load_plan(path: str) -> SavedPlan:
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read())
    except FileNotFoundError:
        raise LoadError("no such plan file", path=path) from None
    except (OSError, ValueError) as exc:
        raise LoadError(f"not a readable plan file: {exc}", path=path) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LoadError(f"not a playbook plan (expected format '{FORMAT}')", path=path)
    nodes = {(n["step"], n["host"]): n for n in doc["nodes"]}
    return SavedPlan(
        path,
        doc["playbook"],
        doc["playbook_hash"],
        doc["inventory"],
        doc["inventory_hash"],
        doc.get("extra_vars", {}),
        doc.get("limit"),
        doc["release_id"],
        doc["run_id"],
        nodes,
        doc["plan_hash"],
    )


def check_files(saved: SavedPlan) -> None:
    """Refuse when the playbook or inventory changed since the plan."""
    for what, path, digest in (
        ("playbook", saved.playbook, saved.playbook_hash),
        ("inventory", saved.inventory, saved.inventory_hash),
    ):
        if not os.path.exists(path):
            raise StalePlan(f"the plan's {what} {path} no longer exists", [])
        if file_hash(path) != digest:
            raise StalePlan(f"the {what} {path} changed since the plan was made: plan again", [])


def drift(saved: SavedPlan, fresh: RunSummary) -> list[tuple[str, str, str]]:
    """(host, step, why) for every node whose fresh read-only plan differs from the saved one."""
    out: list[tuple[str, str, str]] = []
    now = {(n["step"], n["host"]): n for n in _nodes(fresh)}
    for key in sorted(set(saved.nodes) | set(now), key=lambda k: (k[1] or "", k[0])):
        step, host = key
        who = host or "controller"
        a, b = saved.nodes.get(key), now.get(key)
        if a is None:
            out.append((who, step, "not in the saved plan (new host or step)"))
        elif b is None:
            out.append((who, step, "in the saved plan but not targeted now"))
        elif b["status"] in ("failed", "unreachable"):
            out.append((who, step, f"{b['status']}: {b['reason']}"))
        elif a["change"] != b["change"]:
            out.append((who, step, f"was '{a['change']}', now '{b['change']}'"))
        elif _normal(a["fingerprint"]) != _normal(b["fingerprint"]):
            out.append((who, step, _what_differs(a["fingerprint"], b["fingerprint"])))
    return out


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(json_safe(value), sort_keys=True))


def _what_differs(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    a, b = _normal(dict(before or {})), _normal(dict(after or {}))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "changed " + ", ".join(keys) if keys else "fingerprint changed"


def node_drift(expected: Mapping[str, Any] | None, plan: Plan, *, upstream_changed: bool) -> str:
    """Why a node's fresh plan, made just before `apply` changes anything, is not the saved one
    (`expected`, that node's entry in the plan file); "" when it is, or when there is none.

    Nodes downstream of a change legitimately see a different world than at review time (the
    upstream change has been applied since), so only the change itself is compared there."""
    if expected is None:
        return ""
    if expected.get("change") == Change.NO_CHANGE.value and plan.change != Change.NO_CHANGE:
        return "drifted since the plan: it planned no change, now it would change (" + plan.reason + ")"
    if upstream_changed:
        return ""
    if _normal(expected.get("fingerprint", {})) != _normal(dict(plan.fingerprint)):
        return f"drifted since the plan: {_what_differs(expected.get('fingerprint', {}), plan.fingerprint)}"
    return ""
