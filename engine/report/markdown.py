"""A plan as Markdown, sized for a merge-request comment (GitLab notes take 1,000,000 chars;
we stay far below so a reviewer can read it).

Layout: a verdict line, a summary table (step × will change / no change / unknown / failed),
then per step the hosts grouped by identical change ("12 hosts: the same 3 files") with the
diff folded in `<details>`, then the step graph as mermaid. When the document would pass
`limit` characters, whole diffs are dropped from the end and a notice says how many.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.model.results import RunSummary, Status, StepResult
from engine.report.diffs import describe_hosts, group_hosts_exact, render_diff, scrub_diff
from engine.secrets import SCRUBBER

__all__ = ["plan_markdown", "MarkdownReporter", "DEFAULT_LIMIT"]

DEFAULT_LIMIT = 60_000

_WORD = {
    Status.CHANGED: "will change",
    Status.OK: "no change",
    Status.UNKNOWN: "unknown until applied",
    Status.FAILED: "failed",
    Status.UNREACHABLE: "unreachable",
    Status.SKIPPED: "skipped",
}
_RUN_WORD = {**_WORD, Status.CHANGED: "changed", Status.OK: "unchanged"}
_ICON = {
    Status.CHANGED: "🟡",
    Status.OK: "⚪",
    Status.UNKNOWN: "🔵",
    Status.FAILED: "🔴",
    Status.UNREACHABLE: "🔴",
    Status.SKIPPED: "⚫",
}


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _fence(lines: Iterable[str]) -> str:
    body = "\n".join(lines)
    ticks = "```"
    while ticks in body:
        ticks += "`"
    return f"{ticks}diff\n{body}\n{ticks}"


def plan_markdown(
    summary: RunSummary, *, mermaid: str = "", limit: int = DEFAULT_LIMIT, scrubber: Any = SCRUBBER
) -> str:
    """Render a plan (or, for a mode "run" summary, a run report) as Markdown of at most about
    `limit` characters."""
    by_step: dict[str, list[StepResult]] = {}
    for r in summary.results:
        by_step.setdefault(r.step, []).append(r)
    counts = {s: sum(1 for r in summary.results if r.status == s) for s in Status}
    hosts = len(summary.hosts)
    verdict = (
        f"**{counts[Status.CHANGED]} will change**, {counts[Status.OK]} unchanged, "
        f"{counts[Status.UNKNOWN]} unknown"
        + (
            f", **{counts[Status.FAILED] + counts[Status.UNREACHABLE]} failed**"
            if counts[Status.FAILED] + counts[Status.UNREACHABLE]
            else ""
        )
        + f" across {hosts} host{'s' if hosts != 1 else ''}"
    )
    if summary.mode == "run":  # a run report says what happened, not what would
        verdict = verdict.replace("will change**", "changed**", 1).replace(" unknown", " not applied (unknown)", 1)
        head = [f"### playbook run: `{summary.playbook}`", "", verdict, ""]
        head += ["| step | changed | unchanged | unknown | failed |", "|---|---:|---:|---:|---:|"]
    else:
        head = [f"### playbook plan: `{summary.playbook}`", "", verdict, ""]
        head += ["| step | will change | no change | unknown | failed |", "|---|---:|---:|---:|---:|"]
    for step in summary.steps:
        rs = by_step.get(step, [])
        if not rs:
            continue
        c = lambda *st, rs=rs: sum(1 for r in rs if r.status in st)  # noqa: E731
        head.append(
            f"| `{step}` | {c(Status.CHANGED)} | {c(Status.OK)} | {c(Status.UNKNOWN)} | "
            f"{c(Status.FAILED, Status.UNREACHABLE)} |"
        )
    head.append("")

    blocks: list[tuple[str, str]] = []  # (always-kept text, droppable diff details)
    for step in summary.steps:
        rs = by_step.get(step, [])
        interesting = [r for r in rs if r.status != Status.OK]
        if not interesting:
            continue
        parts = [f"#### `{step}`", ""]
        for group, r, exact in group_hosts_exact(interesting):
            who = describe_hosts(group)
            reason = _md_escape(scrubber.scrub(r.message or (r.plan.reason if r.plan else "")))
            word = (_RUN_WORD if summary.mode == "run" else _WORD).get(r.status, r.status.value)
            parts.append(f"- {_ICON.get(r.status, '')} **{who}**: {word} — {reason}")
            diffs = r.plan.diffs if r.plan else ()
            if diffs and r.status in (Status.CHANGED, Status.UNKNOWN):
                lines: list[str] = []
                for d in diffs:
                    lines += render_diff(scrub_diff(d, scrubber))
                same = "the change"
                if len(group) > 1:
                    where = "" if exact else f", each at its own path; shown for {r.host or 'controller'}"
                    same = f"the same change on each{where}"
                detail = (
                    f"\n  <details><summary>{len(lines)} diff lines ({same})</summary>\n\n"
                    + "\n".join("  " + ln for ln in _fence(lines).splitlines())
                    + "\n\n  </details>"
                )
                blocks.append(("\n".join(parts), detail))
                parts = []
        if parts:
            blocks.append(("\n".join(parts), ""))

    tail = []
    if mermaid:
        tail = [
            "",
            "<details><summary>step graph</summary>",
            "",
            "```mermaid",
            mermaid.rstrip(),
            "```",
            "",
            "</details>",
        ]
    tail.append("")
    tail.append(
        f"<sub>run `{summary.run_id}` · exit code {summary.exit_code()}"
        + (" · apply exactly this plan with `playbook apply` on the saved plan file" if summary.mode != "run" else "")
        + "</sub>"
    )

    text_head, text_tail = "\n".join(head), "\n".join(tail)
    budget = limit - len(text_head) - len(text_tail) - 200
    kept: list[str] = []
    dropped = 0
    for always, detail in blocks:
        budget -= len(always) + 1
        if detail and budget - len(detail) >= 0:
            budget -= len(detail)
            kept.append(always + detail)
        else:
            dropped += 1 if detail else 0
            kept.append(always)
    if budget < 0:  # even the one-liners do not fit: cut them too
        while kept and budget < 0:
            budget += len(kept.pop()) + 1
            dropped += 1
    body = "\n".join(kept)
    notice = (
        (
            f"\n\n> ⚠️ Truncated to fit a merge-request note: {dropped} diff(s) left out. "
            f"Run `playbook plan` locally or see the JSON plan for everything."
        )
        if dropped
        else ""
    )
    return scrubber.scrub(text_head + "\n" + body + notice + "\n" + text_tail) + "\n"


class MarkdownReporter:
    """Collects a plan and writes its Markdown to `stream` when it finishes."""

    def __init__(self, stream: Any, *, mermaid: str = "", limit: int = DEFAULT_LIMIT, scrubber: Any = SCRUBBER) -> None:
        self.stream = stream
        self.mermaid = mermaid
        self.limit = limit
        self.scrubber = scrubber

    def __call__(self, event: Any) -> None:
        from engine.model.events import RunFinished

        if isinstance(event, RunFinished):
            self.stream.write(
                plan_markdown(event.summary, mermaid=self.mermaid, limit=self.limit, scrubber=self.scrubber)
            )
            self.stream.flush()
