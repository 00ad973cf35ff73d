"""Turn bench results into the terminal table and docs/benchmarks.md (with the machine description)."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from peers import ANSIBLE, ANSIBLE_CORE, PYINFRA, playbook_command

__all__ = ["machine_description", "render", "render_terminal", "summarize"]

JOB_TITLES = {
    "full": "full deploy (targets empty)",
    "nochange": "no-change re-run",
    "change": "re-run after the 1% change",
    "dryrun": "dry run with a per-file diff",
    "fanout": "fan-out (`true` on every host)",
}


def _first_line(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        return ((p.stdout or p.stderr).strip().splitlines() or ["?"])[0]
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine_description(peers) -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, AttributeError):
        pass
    osname = platform.platform()
    try:
        osname = (
            re.search(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text()).group(1)
            + f" (kernel {platform.release()})"
        )
    except (OSError, AttributeError):
        pass
    pb = playbook_command()
    desc = {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "OS": osname,
        "Python": sys.version.split()[0],
        "rsync": _first_line(["rsync", "--version"]),
        "OpenSSH": _first_line(["ssh", "-V"]),
        "playbook": _first_line([pb[0], "-c", "import importlib.metadata as m; print(m.version('playbook'))"]),
    }
    if peers.ansible_bin:
        desc["ansible-core"] = f"{ANSIBLE_CORE} (`{_first_line([str(peers.ansible_bin), '--version'])}`)"
        manifest = peers.ansible_collections / "ansible_collections/ansible/posix/MANIFEST.json"
        ver = re.search(r'"version":\s*"([^"]+)"', manifest.read_text()) if manifest.exists() else None
        desc["ansible.posix"] = f"{ver.group(1) if ver else '?'} (from the `ansible` {ANSIBLE} wheel)"
    if peers.pyinfra_bin:
        desc["pyinfra"] = f"{PYINFRA} (`{_first_line([str(peers.pyinfra_bin), '--version'])}`)"
    return desc


def summarize(entry: dict) -> dict | None:
    runs = entry["runs"]
    if not runs:
        return None
    med = {k: statistics.median(r[k] for r in runs) for k in ("wall", "cpu", "tree_rss", "root_rss")}
    med["n"] = len(runs)
    if "diff_paths" in runs[0]:
        med["diff_paths"] = runs[0]["diff_paths"]
    return med


def _rows(results: dict, n: str, job: str, tools: list[str]) -> list[list[str]]:
    entries = results.get(n, {}).get(job, {})
    meds = {t: summarize(entries[t]) if t in entries else None for t in tools}
    floor = meds.get("rsync")
    pb = meds.get("playbook")
    rows = []
    for t in tools:
        e = entries.get(t)
        if e is None:
            continue
        if e["failed"]:
            rows.append([t, "FAILED", "", "", "", "", "", "", e["failed"][:160]])
            continue
        if e["unavailable"] and not e["runs"]:
            rows.append([t, e["unavailable"], "", "", "", "", "", "", ""])
            continue
        m = meds[t]
        if m is None:
            continue
        ratio_floor = f"{m['wall'] / floor['wall']:.2f}×" if floor else "–"
        ratio_pb = f"{m['wall'] / pb['wall']:.2f}×" if pb else "–"
        cpu_floor = f"{m['cpu'] / floor['cpu']:.2f}×" if floor and floor["cpu"] > 0 else "–"
        note = ""
        if "diff_paths" in m:
            found, total = m["diff_paths"]
            note = f"diff names {found}/{total} changed paths"
            if found == 0 and t == "pyinfra":
                note += " (files.rsync compares nothing in a dry run: it only says it would run rsync)"
            elif found == 0 and t == "pyinfra-sync":
                note += (
                    " (files.sync compares every file, through facts, but says only that the operation would change)"
                )
        rows.append(
            [
                t,
                f"{m['wall']:.2f}",
                f"{m['cpu']:.2f}",
                f"{m['tree_rss'] / 2**20:.0f}",
                f"{m['root_rss'] / 2**20:.0f}",
                ratio_floor,
                ratio_pb,
                cpu_floor,
                note,
            ]
        )
    return rows


HEAD = [
    "tool",
    "wall s",
    "CPU s",
    "peak tree MB",
    "controller MB",
    "wall × floor",
    "wall × playbook",
    "CPU × floor",
    "notes",
]


def _sizes(results: dict) -> list[str]:
    return [k for k in results if not k.startswith("_")]


def render_terminal(results: dict, ns) -> str:
    lines = []
    for n in _sizes(results):
        for job in ns.jobs:
            rows = _rows(results, n, job, ns.tools)
            if not rows:
                continue
            lines.append(f"N={n}  {JOB_TITLES[job]}")
            widths = [max(len(r[i]) for r in [HEAD, *rows]) for i in range(len(HEAD))]
            for r in [HEAD, *rows]:
                lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            lines.append("")
    return "\n".join(lines)


def render(results: dict, ns, machine: dict[str, str]) -> str:
    t = results["_tree"]
    meta = results["_meta"]
    out = [
        "# Benchmarks",
        "",
        "Generated by `python3 bench/run.py "
        + " ".join(meta["argv"])
        + "` on "
        + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        + f"; the whole bench took {meta['elapsed'] / 60:.1f} min.",
        "How to run it, what is measured and how: [bench/README.md](../bench/README.md).",
        "",
        f"Artifact: {t['files']} files, {t['bytes'] / 1e6:.1f} MB (seed {t['seed']}); the 1% change edits "
        f"{t['edited']} files, adds {t['added']} and removes {t['removed']}. Fleet: N OpenSSH `sshd` on loopback "
        "addresses of this one machine (tests/harness/sshd.py), strict host key checking for every tool.",
        "",
        f"Medians of {meta['repeats']} run{'s' if meta['repeats'] != 1 else ''}. *wall*: the tool's whole process; *CPU*: user+sys of its whole process "
        "tree; *peak tree*: the largest summed RSS of the tree (sampled every 20 ms); *controller*: the peak RSS "
        "(VmHWM) of the tool's own top process alone, without the rsync/ssh children it spawns. Ratios are of wall "
        "time, except *CPU × floor*; when other work shares the machine (see the load average below) wall "
        "times scatter far more than CPU times. A tool whose run leaves any host's tree different from the source is FAILED and not timed.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in machine.items()],
        *_load_rows(results),
        "",
    ]
    for n in _sizes(results):
        out += [f"## N = {n} hosts", ""]
        for job in ns.jobs:
            rows = _rows(results, n, job, ns.tools)
            if not rows:
                continue
            out += [
                f"### {JOB_TITLES[job]}",
                "",
                "| " + " | ".join(HEAD) + " |",
                "|" + "|".join(["---", *["---:"] * 7, "---"]) + "|",
            ]
            out += ["| " + " | ".join(r) + " |" for r in rows]
            out.append("")
    out += _targets(results, ns)
    notes = results.get("_notes", {})
    out += [
        "## How each tool is run",
        "",
        '- **rsync** (the floor): `bench/floor.py` starts `rsync -a --delete -e "ssh -o UserKnownHostsFile=… '
        '-o StrictHostKeyChecking=yes -i key -p port"` (dry run: `-n -i`; fan-out: `ssh host true`) to all '
        "hosts at once from one small Python process. Its ssh negotiates OpenSSH's default key exchange "
        "(sntrup761x25519 on OpenSSH 9, about 70 ms of client CPU per connection here); playbook's rsync asks for "
        "curve25519-sha256 first, what its own paramiko connection uses (docs/connections.md).",
    ]
    pb_note = f"; {notes['playbook']}" if notes.get("playbook") else ""
    out += [
        "- **playbook**: `playbook run` (dry run: `playbook plan`) with an `rsync` step "
        f"(`delete: true`, `releases: false`) or a `command` step, `--forks N`{pb_note}; its packages "
        "byte-compiled first, as a regular `pip install` leaves them."
    ]
    for name, note in notes.items():
        if name != "playbook":
            out.append(f"- **{name}**: {note}.")
    out.append("")
    return "\n".join(out)


def _med(results: dict, n: str, job: str, tool: str) -> dict | None:
    e = results.get(n, {}).get(job, {}).get(tool)
    return summarize(e) if e and not e["failed"] else None


def _targets(results: dict, ns) -> list[str]:
    """Issue 8's targets, checked against the largest N of this run."""
    sizes = _sizes(results)
    if not sizes or "playbook" not in ns.tools:
        return []
    n = max(sizes, key=int)
    rows: list[tuple[str, str, str]] = []

    def ratio(job: str, num: str, den: str) -> float | None:
        a, b = _med(results, n, job, num), _med(results, n, job, den)
        return a["wall"] / b["wall"] if a and b else None

    def check(label: str, value: float | None, ok, shown: str, verdict: str = "") -> None:
        if value is None:
            rows.append((label, "–", "not measured"))
        else:
            rows.append((label, shown.format(value), verdict or ("met" if ok(value) else "**missed**")))

    for job in ("full", "change"):
        check(
            f"{JOB_TITLES[job]}: playbook ≤ 1.0× floor", ratio(job, "playbook", "rsync"), lambda v: v <= 1.0, "{:.2f}×"
        )
    for job in ("nochange", "dryrun"):
        check(
            f"{JOB_TITLES[job]}: playbook ≤ 0.6× floor", ratio(job, "playbook", "rsync"), lambda v: v <= 0.6, "{:.2f}×"
        )
        check(
            f"{JOB_TITLES[job]}: ≥ 5× faster than ansible",
            ratio(job, "ansible", "playbook"),
            lambda v: v >= 5,
            "{:.1f}× faster",
        )
        pyi = _med(results, n, job, "pyinfra")
        if job == "dryrun" and pyi and pyi.get("diff_paths", [1])[0] == 0:
            # no per-file diff, no comparison at all: shown, but not what the target is about
            check(
                f"{JOB_TITLES[job]}: vs pyinfra `files.rsync --dry`",
                ratio(job, "pyinfra", "playbook"),
                lambda v: v >= 2,
                "{:.1f}× faster",
                verdict="not like for like: that dry run compares nothing and names 0 changed paths",
            )
        else:
            check(
                f"{JOB_TITLES[job]}: ≥ 2× faster than pyinfra",
                ratio(job, "pyinfra", "playbook"),
                lambda v: v >= 2,
                "{:.1f}× faster",
            )
        if job == "dryrun":
            check(
                f"{JOB_TITLES[job]}: ≥ 2× faster than pyinfra comparing per file (`files.sync --dry`)",
                ratio(job, "pyinfra-sync", "playbook"),
                lambda v: v >= 2,
                "{:.1f}× faster",
            )
    check(
        f"{JOB_TITLES['fanout']}: ≥ 5× faster than ansible",
        ratio("fanout", "ansible", "playbook"),
        lambda v: v >= 5,
        "{:.1f}× faster",
    )
    peaks = [m["root_rss"] for job in ns.jobs if (m := _med(results, n, job, "playbook"))]
    check(
        "playbook controller peak ≤ 150 MB (any job)",
        max(peaks) / 2**20 if peaks else None,
        lambda v: v <= 150,
        "{:.0f} MB",
    )
    out = [f"## Issue 8 targets (N = {n})", "", "| target | measured | |", "|---|---:|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    out.append("")
    return out


def _load_rows(results: dict) -> list[str]:
    """The 1-minute load average seen before each timed run: other work on the machine skews wall times."""
    rows = []
    for n, loads in results.get("_load", {}).items():
        if loads:
            rows.append(
                f"| load average (1 min) before the N = {n} runs | min {min(loads):.1f}, "
                f"median {statistics.median(loads):.1f}, max {max(loads):.1f} "
                f"(on {os.cpu_count()} cores; anything well above 0 means other work shared the CPU) |"
            )
    return rows
