"""`playbook history --html DIR`: a static report of the recorded runs, to open in a browser.

`DIR/index.html` plus `DIR/assets/` (one stylesheet, one small script), no server and nothing
fetched from the network. For each run: when, who, which release, the status per host, a
timeline (one row per host, one bar per step from its start to its end, coloured by status,
with the step, status, duration and message on hover), and the diffs each step showed. The page
works without its script (diffs are `<details>`); the script only filters runs by status.

Everything shown comes from the history, which was scrubbed of secrets when it was written; it
passes the scrubber again on the way out, and every value is HTML-escaped.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import html
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.secrets import SCRUBBER

if TYPE_CHECKING:
    from engine.record.history import RunRecord

__all__ = ["write_report", "timeline_svg"]

#: status -> (fill colour, label); colour-blind-safe pairs, failures the strongest
COLOURS = {
    "ok": ("#4c9f70", "ok"),
    "changed": ("#e0a526", "changed"),
    "failed": ("#c8372d", "failed"),
    "unreachable": ("#7a1f1a", "unreachable"),
    "skipped": ("#a8a8a8", "skipped"),
    "unknown": ("#7d5ba6", "unknown"),
}
_ROW = 22  # px per host row of a timeline
_LABEL = 150  # px for the host names
_WIDTH = 900  # px for the time axis


def _e(value: Any) -> str:
    return html.escape(SCRUBBER.scrub(str(value)), quote=True)


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _spans(results: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], float, float]]:
    """(result, start, end) for every result that carries its end time."""
    out = []
    for r in results:
        end = r.get("finished")
        if end is None:
            continue
        out.append((r, end - (r.get("duration") or 0.0), end))
    return out


def timeline_svg(results: Sequence[dict[str, Any]], hosts: Sequence[str]) -> str:
    """An inline SVG: one row per host (the controller first), one bar per step."""
    spans = _spans(results)
    rows = ["controller", *sorted(h for h in hosts if h != "controller")]
    if not spans:
        return '<p class="empty">no step timings recorded</p>'
    t0 = min(s for _, s, _ in spans)
    t1 = max(e for _, _, e in spans)
    scale = _WIDTH / max(t1 - t0, 1e-3)
    height = _ROW * len(rows) + 24
    parts = [
        f'<svg class="timeline" role="img" viewBox="0 0 {_LABEL + _WIDTH + 10} {height}" '
        f'width="{_LABEL + _WIDTH + 10}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>timeline: {len(rows)} rows, {t1 - t0:.2f} s</title>",
    ]
    for i, host in enumerate(rows):
        y = i * _ROW
        parts.append(f'<text class="host" x="0" y="{y + 15}">{_e(host)}</text>')
        parts.append(f'<line x1="{_LABEL}" x2="{_LABEL + _WIDTH}" y1="{y + _ROW}" y2="{y + _ROW}" class="grid"/>')
    index = {h: i for i, h in enumerate(rows)}
    for r, start, end in spans:
        row = index.get(r.get("host") or "controller")
        if row is None:
            continue
        x = _LABEL + (start - t0) * scale
        w = max((end - start) * scale, 2.0)
        fill, _ = COLOURS.get(r["status"], ("#555", r["status"]))
        tip = f"{r['step']} on {r.get('host') or 'controller'}: {r['status']} ({end - start:.2f} s)"
        if r.get("message"):
            tip += f" - {r['message']}"
        parts.append(
            f'<rect class="step {_e(r["status"])}" x="{x:.1f}" y="{row * _ROW + 3}" width="{w:.1f}" '
            f'height="{_ROW - 6}" fill="{fill}" data-step="{_e(r["step"])}"><title>{_e(tip)}</title></rect>'
        )
        if w > 8 * len(r["step"]):
            parts.append(f'<text class="label" x="{x + 3:.1f}" y="{row * _ROW + 15}">{_e(r["step"])}</text>')
    axis_y = len(rows) * _ROW + 16
    parts.append(f'<text class="axis" x="{_LABEL}" y="{axis_y}">0 s</text>')
    parts.append(f'<text class="axis end" x="{_LABEL + _WIDTH}" y="{axis_y}">{t1 - t0:.2f} s</text>')
    parts.append("</svg>")
    return "".join(parts)


_ITEM_CLASS = {"+": "add", "-": "del", "~": "mod", "->": "move"}


def _diff_html(diff: dict[str, Any]) -> str:
    head = _e(diff.get("header", ""))
    lines: list[str] = []
    if diff.get("binary"):
        lines.append("binary content differs")
    elif diff.get("items"):
        for kind, path in diff["items"]:
            lines.append(f'<span class="{_ITEM_CLASS.get(kind, "")}">{_e(kind)} {_e(path)}</span>')
    else:
        before = (diff.get("before") or "").splitlines()
        after = (diff.get("after") or "").splitlines()
        for line in difflib.unified_diff(before, after, "before", "after", lineterm=""):
            cls = "add" if line.startswith("+") else "del" if line.startswith("-") else ""
            lines.append(f'<span class="{cls}">{_e(line)}</span>' if cls else _e(line))
    if diff.get("truncated"):
        lines.append("… (truncated)")
    return f"<div class='diff'><div class='dhead'>{head}</div><pre>{chr(10).join(lines)}</pre></div>"


def _host_table(results: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
    counts: dict[str, dict[str, int]] = {}
    for r in results:
        counts.setdefault(r.get("host") or "controller", {}).setdefault(r["status"], 0)
        counts[r.get("host") or "controller"][r["status"]] += 1
    hosts = sorted(counts, key=lambda h: (h != "controller", h))
    head = "".join(f"<th>{s}</th>" for s in COLOURS)
    rows = []
    for host in hosts:
        c = counts[host]
        worst = next((s for s in ("unreachable", "failed", "unknown", "changed", "ok", "skipped") if c.get(s)), "ok")
        cells = "".join(f"<td class='n {s}'>{c.get(s, 0) or ''}</td>" for s in COLOURS)
        rows.append(f"<tr class='{worst}'><td class='hostname'>{_e(host)}</td>{cells}</tr>")
    return f"<table class='hosts'><tr><th>host</th>{head}</tr>{''.join(rows)}</table>", hosts


def _run_section(rec: RunRecord, results: list[dict[str, Any]]) -> str:
    table, hosts = _host_table(results)
    duration = f"{rec.finished - rec.started:.1f} s" if rec.finished else "still running or interrupted"
    diffs = []
    for r in sorted(results, key=lambda r: (r.get("host") or "", r.get("finished") or 0)):
        if not r.get("diffs"):
            continue
        body = "".join(_diff_html(d) for d in r["diffs"])
        diffs.append(
            f"<details class='change {_e(r['status'])}'><summary>{_e(r.get('host') or 'controller')} · "
            f"{_e(r['step'])} · {_e(r['status'])}</summary>{body}</details>"
        )
    failures = [r for r in results if r["status"] in ("failed", "unreachable")]
    failed = "".join(
        f"<li><b>{_e(r.get('host') or 'controller')}</b> {_e(r['step'])}: {_e(r.get('message') or '')}</li>"
        for r in failures
    )
    return (
        f"<section class='run' id='run-{_e(rec.run_id)}' data-status='{_e(rec.status)}'>"
        f"<h2><span class='badge {_e(rec.status)}'>{_e(rec.status)}</span> run <code>{_e(rec.run_id)}</code> · "
        f"{_e(rec.name)}</h2>"
        f"<p class='meta'>{_when(rec.started)} · {_e(rec.user)} · {_e(rec.mode)} · release "
        f"<code>{_e(rec.release_id or '-')}</code> · exit {_e(rec.exit_code if rec.exit_code is not None else '-')}"
        f" · {duration}</p>"
        f"{table}"
        f"<h3>Timeline</h3>{timeline_svg(results, hosts)}"
        + (f"<h3>Failures</h3><ul class='failures'>{failed}</ul>" if failed else "")
        + (f"<h3>Changes</h3>{''.join(diffs)}" if diffs else "")
        + "</section>"
    )


def _index(runs: list[tuple[RunRecord, list[dict[str, Any]]]], title: str) -> str:
    rows = []
    for rec, results in runs:
        hosts = {r.get("host") for r in results if r.get("host")}
        rows.append(
            f"<tr class='{_e(rec.status)}'><td><a href='#run-{_e(rec.run_id)}'><code>{_e(rec.run_id)}</code></a></td>"
            f"<td>{_when(rec.started)}</td><td>{_e(rec.name)}</td><td>{_e(rec.user)}</td>"
            f"<td><code>{_e(rec.release_id or '')}</code></td><td>{len(hosts)}</td>"
            f"<td><span class='badge {_e(rec.status)}'>{_e(rec.status)}</span></td></tr>"
        )
    legend = "".join(f"<span class='key'><i style='background:{c}'></i>{label}</span>" for c, label in COLOURS.values())
    filters = "".join(
        f"<button type='button' data-filter='{s}'>{s}</button>" for s in ("all", "ok", "failed", "interrupted")
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><link rel='stylesheet' href='assets/report.css'></head><body>"
        f"<header><h1>{_e(title)}</h1><p>{len(runs)} run(s), newest first. Generated {_when(_now())}.</p>"
        f"<nav class='filters'>{filters}</nav><p class='legend'>{legend}</p></header>"
        "<table class='runs'><tr><th>run</th><th>started</th><th>playbook</th><th>user</th><th>release</th>"
        f"<th>hosts</th><th>status</th></tr>{''.join(rows)}</table>"
        + "".join(_run_section(rec, results) for rec, results in runs)
        + "<script src='assets/report.js'></script></body></html>\n"
    )


def _now() -> float:
    import time

    return time.time()


_CSS = """\
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; } h3 { font-size: 1em; }
code { font: 12px ui-monospace, monospace; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
td.n { text-align: right; min-width: 3em; }
.badge { color: #fff; border-radius: 3px; padding: 0 6px; font-size: .85em; }
.badge.ok { background: #4c9f70; } .badge.failed { background: #c8372d; }
.badge.interrupted, .badge.running { background: #7d5ba6; }
tr.failed td.hostname, tr.unreachable td.hostname { color: #c8372d; font-weight: bold; }
.meta { color: #555; }
svg.timeline { background: #fafafa; border: 1px solid #eee; max-width: 100%; height: auto; }
svg .host, svg .axis { font: 11px ui-monospace, monospace; fill: #333; }
svg .axis.end { text-anchor: end; }
svg .label { font: 10px ui-monospace, monospace; fill: #fff; pointer-events: none; }
svg .grid { stroke: #eee; }
.legend .key { margin-right: 1em; } .legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
details.change { margin: .3em 0; } summary { cursor: pointer; }
.diff pre { background: #f6f8fa; padding: .5em; overflow-x: auto; margin: .2em 0 .6em; }
.diff .dhead { font-weight: bold; font-family: ui-monospace, monospace; }
.diff .add { color: #116329; } .diff .del { color: #a40e26; } .diff .mod { color: #8a5a00; } .diff .move { color: #0b4f8a; }
.filters button { margin-right: .4em; } .filters button.on { font-weight: bold; }
section.run.hidden, tr.hidden { display: none; }
"""

_JS = """\
"use strict";
(function () {
  var buttons = document.querySelectorAll(".filters button");
  function show(status) {
    document.querySelectorAll("section.run").forEach(function (s) {
      s.classList.toggle("hidden", status !== "all" && s.dataset.status !== status);
    });
    document.querySelectorAll("table.runs tr[class]").forEach(function (r) {
      r.classList.toggle("hidden", status !== "all" && !r.classList.contains(status));
    });
    buttons.forEach(function (b) { b.classList.toggle("on", b.dataset.filter === status); });
  }
  buttons.forEach(function (b) { b.addEventListener("click", function () { show(b.dataset.filter); }); });
  show("all");
})();
"""


def write_report(
    out_dir: str | os.PathLike[str],
    runs: Sequence[tuple[RunRecord, list[dict[str, Any]]]],
    *,
    title: str = "playbook history",
) -> Path:
    """Write `index.html` and `assets/` under `out_dir` (created; each file replaced atomically)
    for `runs`: (record, `History.details` of it), newest first. Returns the index's path."""
    out = Path(out_dir)
    (out / "assets").mkdir(parents=True, exist_ok=True)
    _write(out / "assets" / "report.css", _CSS)
    _write(out / "assets" / "report.js", _JS)
    index = out / "index.html"
    _write(index, _index(list(runs), title))
    return index


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
