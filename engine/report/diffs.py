"""Diffs (data) rendered as text lines, and hosts with identical plans grouped for display.

Presenters (console, markdown) colour the lines by their first characters: `+`/`-` added or
removed, `~` modified, `->` a move (a symlink switch), `@@` a hunk header.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from engine.model.results import Diff, StepResult

__all__ = [
    "MAX_DIFF_LINES",
    "render_diff",
    "scrub_diff",
    "group_hosts",
    "group_hosts_exact",
    "host_sort_key",
    "compress_hosts",
    "describe_hosts",
]

MAX_DIFF_LINES = 200
CONTROLLER = "controller"


def scrub_diff(diff: Diff, scrubber: Any) -> Diff:
    """A copy of `diff` with every text field scrubbed *before* it is split into lines.

    Scrubbing whole texts first matters for multi-line secrets, which a line-by-line
    scrub of the rendered diff would miss.
    """
    return replace(
        diff,
        header=scrubber.scrub(diff.header),
        before=None if diff.before is None else scrubber.scrub(diff.before),
        after=None if diff.after is None else scrubber.scrub(diff.after),
        items=tuple((scrubber.scrub(op), scrubber.scrub(path)) for op, path in diff.items),
    )


def render_diff(diff: Diff, *, max_lines: int = MAX_DIFF_LINES, context: int = 3) -> list[str]:
    """Render one diff as plain text lines (no trailing newlines).

    Text (`before`/`after`) becomes a unified diff with the header as file name (`/dev/null`
    for a side that does not exist); tree `items` become one line each under the header;
    binary and truncated diffs say so. More than `max_lines` lines end with "… N more lines".
    """
    lines: list[str] = []
    if diff.binary:
        lines.append(f"Binary content differs: {diff.header}")
    elif diff.before is not None or diff.after is not None:
        before = (diff.before or "").splitlines()
        after = (diff.after or "").splitlines()
        lines.extend(
            difflib.unified_diff(
                before,
                after,
                fromfile=diff.header if diff.before is not None else "/dev/null",
                tofile=diff.header if diff.after is not None else "/dev/null",
                n=context,
                lineterm="",
            )
        )
    if diff.items:
        if diff.header and not lines:
            lines.append(f"{diff.header}:")
        lines.extend(f"  {op} {path}" for op, path in diff.items)
    if not lines and diff.header:
        lines.append(f"{diff.header}: (no textual difference)")
    if diff.truncated:
        lines.append("… (diff truncated)")
    if len(lines) > max_lines:
        hidden = len(lines) - max_lines
        lines = lines[:max_lines] + [f"… {hidden} more line{'s' if hidden != 1 else ''}"]
    return lines


_HOST = "\x00host\x00"


def _own(text: str | None, host: str | None) -> str | None:
    """`text` with the host's own name replaced by a placeholder: per-host paths such as
    `/srv/{{ host.name }}/app` then compare equal."""
    if text is None or not host:
        return text
    return re.sub(rf"(?<![\w.-]){re.escape(host)}(?![\w-])", _HOST, text)


def _group_key(r: StepResult, *, own_paths: bool = True) -> Hashable:
    host = r.host if own_paths else None
    plan = r.plan
    if plan is None:
        return (r.status, None, "", (), _own(r.message, host))
    diffs = tuple(
        replace(
            d,
            header=_own(d.header, host) or "",
            before=_own(d.before, host),
            after=_own(d.after, host),
            items=tuple((op, _own(p, host) or "") for op, p in d.items),
        )
        for d in plan.diffs
    )
    return (r.status, plan.change, _own(plan.reason, host), diffs, _own(r.message, host))


def group_hosts(results: Iterable[StepResult]) -> list[tuple[list[str], StepResult]]:
    """Group one step's results whose (status, reason, diffs, message) are identical, or differ
    only by each host's own name in them (its own paths).

    Returns `(hosts, key_result)` pairs; hosts (controller steps as "controller") are sorted
    naturally (web2 before web10) and the groups by their first host, so the same plan always
    prints the same way whatever order the hosts answered in. `key_result` is the first
    result of the group, whose plan stands for all of them.
    """
    return [(hosts, r) for hosts, r, _exact in group_hosts_exact(results)]


def group_hosts_exact(results: Iterable[StepResult]) -> list[tuple[list[str], StepResult, bool]]:
    """`group_hosts`, plus whether the group's results are identical (False: they differ by
    the hosts' own names, e.g. each host's own path)."""
    groups: dict[Hashable, tuple[list[str], StepResult, set[Hashable]]] = {}
    for r in results:
        key = _group_key(r)
        exact = _group_key(r, own_paths=False)
        try:
            hash(key)
            hash(exact)
        except TypeError:  # a module put something unhashable in a Diff: don't group it
            key = exact = (id(r),)
        host = r.host or CONTROLLER
        if key in groups:
            groups[key][0].append(host)
            groups[key][2].add(exact)
        else:
            groups[key] = ([host], r, {exact})
    out = [(sorted(hosts, key=host_sort_key), r, len(raw) == 1) for hosts, r, raw in groups.values()]
    return sorted(out, key=lambda g: host_sort_key(g[0][0]))


_NUM = re.compile(r"(\d+)")


def host_sort_key(host: str) -> tuple[Any, ...]:
    """Natural sort: web2 < web10; text and numbers compared piecewise."""
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in _NUM.split(host) if p)


_TRAILING_NUM = re.compile(r"^(.*?)(\d+)([^\d]*)$")


def _runs(hosts: Sequence[str]) -> list[list[str]]:
    """Split naturally sorted hosts into runs of consecutive numbers with the same prefix,
    suffix and digit width (web01, web02, web03 → one run)."""
    runs: list[list[str]] = []
    prev: tuple[str, int, str, int] | None = None
    for h in hosts:
        m = _TRAILING_NUM.match(h)
        # Width 0 stands for "not zero-padded", so web9 and web10 still form one run.
        cur = None
        if m:
            digits = m.group(2)
            width = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
            cur = (m.group(1), int(digits), m.group(3), width)
        if (
            runs
            and cur is not None
            and prev is not None
            and cur[0] == prev[0]
            and cur[2] == prev[2]
            and (cur[3] == prev[3] or (cur[3] == 0 and len(str(cur[1])) == prev[3]))
            and cur[1] == prev[1] + 1
        ):
            runs[-1].append(h)
        else:
            runs.append([h])
        prev = cur
    return runs


def compress_hosts(hosts: Iterable[str], limit: int = 4) -> str:
    """A short readable host list: consecutive names collapse to ranges and at most `limit`
    parts are shown, e.g. "web01..web12, db1, db3 +5 more"."""
    ordered = sorted(dict.fromkeys(hosts), key=host_sort_key)
    parts: list[tuple[str, int]] = []
    for run in _runs(ordered):
        if len(run) >= 4:
            parts.append((f"{run[0]}..{run[-1]}", len(run)))
        else:
            parts.extend((h, 1) for h in run)
    shown = parts[:limit]
    text = ", ".join(p for p, _ in shown)
    hidden = sum(n for _, n in parts[limit:])
    if hidden:
        text += f" +{hidden} more"
    return text


def describe_hosts(hosts: Sequence[str], limit: int = 4) -> str:
    """ "web01" for one host, "3 hosts (web01, web02, web04)" or "12 hosts (web01..web12)"."""
    unique = list(dict.fromkeys(hosts))
    if len(unique) == 1:
        return unique[0]
    return f"{len(unique)} hosts ({compress_hosts(unique, limit)})"
