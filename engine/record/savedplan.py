"""Saved plans: `playbook plan -o plan.json` and `playbook apply plan.json`.

A saved plan records what was reviewed: the playbook and inventory (paths and content hashes),
the options (extra vars, secret *names*, limit, release id), and per (step, host) the intended
change, its reason, its diffs and the fingerprint of what the module observed (file manifests,
`current` target, artifact digests, git HEAD, resourceVersions).

The file is untrusted input until it verifies. Its `plan_hash` is the sha256 of the canonical
JSON of every other field (the format included), so any edit that does not also recompute the
hash is refused; with a key (engine/record/plansign.py) it is also signed, so an edit by whoever
lacks the key is refused too. A file of another format is refused with "plan again".

`apply` then refuses a plan whose playbook or inventory changed, re-plans read-only and refuses,
naming every drifted host and step, when any node's change, diffs or fingerprint no longer
match; only then does it apply, checking each step again just before it changes anything.
Secret values never enter the file (they are scrubbed, and secret vars are read again from
their sources at apply time).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import LoadError, PlaybookError, StalePlan, UntrustedPlan
from engine.model import jsonable
from engine.model.jsonable import json_safe
from engine.model.results import Change, Plan, RunSummary
from engine.record.plansign import ALGORITHM, KEY_ENV, KEY_FILE_ENV, PlanKey
from engine.secrets import SCRUBBER

__all__ = [
    "FORMAT",
    "SavedPlan",
    "save_plan",
    "load_plan",
    "plan_hash",
    "plan_nodes",
    "check_files",
    "drift",
    "node_drift",
    "StalePlan",
    "UntrustedPlan",
    "file_hash",
]

#: Version 2: the hash covers the whole file and the file may be signed (version 1 hashed only
#: the nodes, so an edited `extra_vars` or `release_id` went unnoticed).
FORMAT = "playbook-plan/2"
_UNHASHED = ("plan_hash", "signature")


@dataclass(frozen=True)
class SavedPlan:
    """A plan file that verified: its fields, and the key id that signed it ("" unsigned)."""

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
    secret_vars: tuple[str, ...] = ()
    signed_by: str = ""


def plan_nodes(summary: RunSummary) -> list[dict[str, Any]]:
    """The summary's nodes as a plan file stores them, sorted by (step, host)."""
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


def _canonical(doc: Mapping[str, Any]) -> bytes:
    """The bytes the hash and the signature cover: every field but those two, canonical JSON."""
    body = {k: v for k, v in doc.items() if k not in _UNHASHED}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def plan_hash(doc: Mapping[str, Any]) -> str:
    """The hash of a plan file's contents: sha256 over the canonical JSON (sorted keys, no
    spaces, UTF-8) of every field except `plan_hash` and `signature`."""
    return "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest()


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
    key: PlanKey | None = None,
) -> str:
    """Write the plan file (mode 0600), signed when `key` is given, and return its plan hash."""
    nodes = plan_nodes(summary)
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
        "nodes": nodes,
    }
    # scrubbed and made plain JSON first: the hash must cover exactly the bytes that are read back
    doc = json.loads(json.dumps(scrubber.scrub_obj(doc), default=str))
    doc["plan_hash"] = plan_hash(doc)
    if key is not None:
        doc["signature"] = {"alg": ALGORITHM, "key_id": key.key_id, "value": key.sign(_canonical(doc))}
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return str(doc["plan_hash"])


def load_plan(path: str, *, key: PlanKey | None = None) -> SavedPlan:
    """Read a plan file and verify it before anything in it is used: the format, the hash over
    the whole file and, per the key policy, the signature. Raises `LoadError` for a file that is
    not a readable plan of this format and `UntrustedPlan` for one that fails verification.

    Key policy (docs/review-and-recovery.md): with a key configured, the plan must carry a valid
    signature by that key. Without one, an unsigned plan is checked by its hash alone, and a
    signed plan is refused: it was meant to be verified, and applying it unverified because a
    CI variable went missing would be silent."""
    try:
        with open(path, "rb") as fh:
            doc = jsonable.loads(fh.read())
    except FileNotFoundError:
        raise LoadError("no such plan file", path=path) from None
    except (OSError, ValueError) as exc:
        raise LoadError(f"not a readable plan file: {exc}", path=path) from None
    found = doc.get("format") if isinstance(doc, dict) else None
    if isinstance(found, str) and found.startswith("playbook-plan/") and found != FORMAT:
        raise LoadError(
            f"written in format {found} by another version of playbook; this one reads {FORMAT}: plan again",
            path=path,
        )
    if found != FORMAT:
        raise LoadError(f"not a playbook plan (expected format '{FORMAT}')", path=path)
    refuse = _refuser(path)
    recorded = doc.get("plan_hash")
    if recorded != plan_hash(doc):
        refuse(
            "it was altered after it was written: its plan_hash does not match its contents "
            f"(recorded {str(recorded)[:19]}…, contents {plan_hash(doc)[:19]}…)"
        )
    signed_by = _check_signature(doc, key, refuse)
    try:
        nodes = {(n["step"], n["host"]): n for n in doc["nodes"]}
        return SavedPlan(
            path,
            str(doc["playbook"]),
            str(doc["playbook_hash"]),
            str(doc["inventory"]),
            str(doc["inventory_hash"]),
            dict(doc.get("extra_vars") or {}),
            doc.get("limit"),
            str(doc["release_id"]),
            str(doc["run_id"]),
            nodes,
            str(doc["plan_hash"]),
            tuple(str(s) for s in doc.get("secret_vars") or ()),
            signed_by,
        )
    except KeyError as exc:
        raise LoadError(f"malformed plan file: no '{exc.args[0]}'", path=path) from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise LoadError(f"malformed plan file: {exc}", path=path) from None


def _refuser(path: str) -> Callable[[str], None]:
    def refuse(why: str) -> None:
        raise UntrustedPlan(f"refusing to apply {path}: {why}; plan again and review the new plan", plan_file=path)

    return refuse


def _check_signature(doc: Mapping[str, Any], key: PlanKey | None, refuse: Callable[[str], None]) -> str:
    """The key id that signed `doc` ("" for unsigned), after the key policy of `load_plan`."""
    sig = doc.get("signature")
    if sig is not None and not (
        isinstance(sig, dict) and isinstance(sig.get("key_id"), str) and isinstance(sig.get("value"), str)
    ):
        refuse("its signature is malformed")
    if key is None:
        if sig is not None:
            refuse(
                f"it is signed (key id {sig['key_id']}) but no key is configured to verify it: "
                f"set {KEY_ENV} or {KEY_FILE_ENV} to the key it was signed with"
            )
        return ""
    if sig is None:
        refuse(f"it is not signed, and a plan key is configured ({key.source}): only signed plans are applied")
    assert isinstance(sig, dict)
    if sig.get("alg") != ALGORITHM:
        refuse(f"its signature uses {sig.get('alg')!r}, not {ALGORITHM}")
    if sig["key_id"] != key.key_id:
        refuse(f"it was signed with another key (key id {sig['key_id']}; the configured key's id is {key.key_id})")
    if not key.verify(_canonical(doc), sig["value"]):
        refuse("its signature does not match its contents: it was altered after it was signed")
    return str(sig["key_id"])


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


def drift(
    saved: SavedPlan, fresh: RunSummary, *, scrub: Callable[[Any], Any] = SCRUBBER.scrub_obj
) -> list[tuple[str, str, str]]:
    """(host, step, why) for every node whose fresh read-only plan differs from the saved one:
    in its change, its fingerprint or its diffs. The fresh nodes pass `scrub` first, as the
    saved ones did when they were written."""
    out: list[tuple[str, str, str]] = []
    now = {(n["step"], n["host"]): n for n in scrub(plan_nodes(fresh))}
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
        elif a.get("change") != b["change"]:
            out.append((who, step, f"was '{a.get('change')}', now '{b['change']}'"))
        elif _normal(a.get("fingerprint", {})) != _normal(b["fingerprint"]):
            out.append((who, step, _what_differs(a.get("fingerprint", {}), b["fingerprint"])))
        elif _normal(a.get("diffs", [])) != _normal(b["diffs"]):
            out.append((who, step, _diffs_differ(a.get("diffs", []), b["diffs"])))
    return out


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(json_safe(value), sort_keys=True))


def _what_differs(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    a, b = _normal(dict(before or {})), _normal(dict(after or {}))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "changed " + ", ".join(keys) if keys else "fingerprint changed"


def _diffs_differ(saved: Sequence[Any], fresh: Sequence[Any]) -> str:
    """What a reviewer saw that a fresh plan does not show (and the reverse), for the first
    diff that differs: its header and a few of the entries or the text."""
    a = {d.get("header"): d for d in _normal(list(saved)) if isinstance(d, dict)}
    b = {d.get("header"): d for d in _normal(list(fresh)) if isinstance(d, dict)}
    if set(a) != set(b):
        only_a, only_b = sorted(map(str, set(a) - set(b))), sorted(map(str, set(b) - set(a)))
        return f"the plan shows diffs of {_few(only_a) or 'nothing else'}, a fresh plan of {_few(only_b) or 'nothing else'}"
    for header in sorted(a, key=str):
        da, db = a[header], b[header]
        if da == db:
            continue
        items_a = {" ".join(map(str, i)) for i in da.get("items") or []}
        items_b = {" ".join(map(str, i)) for i in db.get("items") or []}
        if items_a != items_b:
            return (
                f"diff of {header} differs: the plan shows {_few(sorted(items_a - items_b)) or 'nothing more'}, "
                f"a fresh plan shows {_few(sorted(items_b - items_a)) or 'nothing more'}"
            )
        return f"diff of {header} differs (its before/after text)"
    return "diffs differ"


def _few(items: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return f"{shown}, … ({len(items)} in all)" if len(items) > n else shown


def node_drift(
    expected: Mapping[str, Any] | None,
    plan: Plan,
    *,
    upstream_changed: bool,
    scrub: Callable[[Any], Any] = SCRUBBER.scrub_obj,
) -> str:
    """Why a node's fresh plan, made just before `apply` changes anything, is not the saved one
    (`expected`, that node's entry in the plan file): its change, fingerprint or diffs; "" when
    it is, or when there is none.

    Nodes downstream of a change legitimately see a different world than at review time (the
    upstream change has been applied since), so only the change itself is compared there."""
    if expected is None:
        return ""
    if expected.get("change") == Change.NO_CHANGE.value and plan.change != Change.NO_CHANGE:
        return "drifted since the plan: it planned no change, now it would change (" + plan.reason + ")"
    if upstream_changed:
        return ""
    fingerprint = scrub(json_safe(dict(plan.fingerprint)))
    if _normal(expected.get("fingerprint", {})) != _normal(fingerprint):
        return f"drifted since the plan: {_what_differs(expected.get('fingerprint', {}), fingerprint)}"
    diffs = scrub([d.to_dict() for d in plan.diffs])
    if "diffs" in expected and _normal(expected["diffs"]) != _normal(diffs):
        return f"drifted since the plan: {_diffs_differ(expected['diffs'], diffs)}"
    return ""
