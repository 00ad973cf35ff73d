"""`playbook drift` as text for a terminal and as Markdown for an issue (a scheduled CI job).

Both render the document `DriftReport.to_dict()` gives (engine/record/drift.py), the same one
`--format json` prints: one host per block, what differs under it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["drift_text", "drift_markdown", "headline"]

_MARK = {
    "release": "->",
    "missing": "-",
    "added": "+",
    "changed": "~",
    "tree": "!",
    "unrecorded": "?",
    "image": "~",
    "selector": "->",
    "values": "~",
}


def headline(doc: Mapping[str, Any]) -> str:
    """One line: how many hosts drifted and which could not be read."""
    hosts = {h["host"] for h in doc["hosts"]}
    parts = [f"{len(doc['drifted'])} of {len(hosts)} host(s) drifted from what {doc['playbook']} deployed"]
    if not doc["drifted"]:
        parts = [f"no drift: {len(hosts)} host(s) serve what {doc['playbook']} deployed"]
    if doc["errors"]:
        parts.append(f"{len(doc['errors'])} could not be read ({', '.join(doc['errors'])})")
    return "; ".join(parts)


def _more(h: Mapping[str, Any]) -> list[str]:
    shown = {k: sum(1 for f in h["findings"] if f["what"] == k) for k in ("missing", "added", "changed")}
    return [f"... and {n - shown[k]} more {k}" for k, n in h["counts"].items() if n > shown.get(k, 0)]


def _recorded(h: Mapping[str, Any]) -> str:
    rec = h["recorded"]
    if not rec:
        return ""
    release = f"release {rec['release']}" if rec["release"] else (rec.get("what") or "deployed")
    return f"{release} by {rec['by']} {rec['run_id']}"


def drift_text(doc: Mapping[str, Any], *, verbose: bool = False) -> str:
    """The console view: hosts that drifted or failed with their differences (all hosts with
    `verbose`), then the headline."""
    lines: list[str] = []
    for h in doc["hosts"]:
        if h["status"] == "ok" and not verbose:
            continue
        head = f"{h['host']}  {h['step']}: {h['status']}"
        rec = _recorded(h)
        lines.append(f"{head} ({rec})" if rec else head)
        if h["error"]:
            lines.append(f"  {h['error']}")
        for f in h["findings"]:
            where = f" {f['path']}" if f["path"] else ""
            lines.append(
                f"  {_MARK.get(f['what'], '*')}{where}  {f['detail']}"
                if where
                else f"  {_MARK.get(f['what'], '*')} {f['detail']}"
            )
        lines += [f"  {text}" for text in _more(h)]
    lines.append(headline(doc))
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def drift_markdown(doc: Mapping[str, Any]) -> str:
    """A Markdown document for an issue: a headline, a table of hosts, then each drifted host's
    differences."""
    out = [f"## Drift: {doc['playbook']}", "", headline(doc), ""]
    out += ["| host | step | status | recorded | live release |", "| --- | --- | --- | --- | --- |"]
    for h in doc["hosts"]:
        rec = _recorded(h) or "nothing recorded"
        out.append(
            f"| {_cell(h['host'])} | {_cell(h['step'])} | {h['status']} | {_cell(rec)} | {_cell(h['live_release'])} |"
        )
    for h in doc["hosts"]:
        if h["status"] == "ok":
            continue
        out += ["", f"### {h['host']} ({h['step']})", ""]
        if h["error"]:
            out.append(f"- could not be read: {_cell(h['error'])}")
        for f in h["findings"]:
            path = f"`{f['path']}`: " if f["path"] else ""
            out.append(f"- **{f['what']}** {path}{_cell(f['detail'])}")
        out += [f"- {text}" for text in _more(h)]
    return "\n".join(out) + "\n"
