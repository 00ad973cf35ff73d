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

from peers import ANSIBLE, ANSIBLE_CORE, MATPLOTLIB, MITOGEN, PYINFRA, playbook_command

__all__ = ["machine_description", "merge", "render", "render_terminal", "summarize"]

JOB_TITLES = {
    "full": "full deploy (targets empty)",
    "nochange": "no-change re-run",
    "change": "re-run after the 1% change",
    "dryrun": "dry run with a per-file diff",
    "fanout": "fan-out (`true` on every host)",
    "steps": "20 small steps (10 files, 10 guarded commands; targets empty)",
    "steps-nochange": "20 small steps, re-run with nothing to do",
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
        if m := re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()):
            mem = f"{int(m.group(1)) / 2**20:.1f} GiB"
    except OSError:
        pass
    osname = platform.platform()
    try:
        if m := re.search(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text()):
            osname = m.group(1) + f" (kernel {platform.release()})"
    except OSError:
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
    if getattr(peers, "mitogen_bin", None):
        desc["mitogen"] = f"{MITOGEN} (on ansible-core {ANSIBLE_CORE}, bench/.venvs/ansible-mitogen)"
    if peers.pyinfra_bin:
        desc["pyinfra"] = f"{PYINFRA} (`{_first_line([str(peers.pyinfra_bin), '--version'])}`)"
    return desc


def merge(saved: list[dict]) -> tuple[dict, dict[str, str]]:
    """One results dict from several saved runs (oldest first): each fleet size comes whole from
    the newest run that has it, so a table never mixes runs. The machine is the newest run's."""
    results: dict = {"_meta": {"elapsed": 0.0, "argv": [], "repeats": 0, "sources": {}}}
    for doc in saved:
        res = doc["results"]
        meta = res.get("_meta", {})
        results["_meta"]["elapsed"] += meta.get("elapsed", 0.0)
        results["_meta"]["repeats"] = max(results["_meta"]["repeats"], meta.get("repeats", 0))
        results["_meta"]["heavy_repeats"] = meta.get("heavy_repeats", results["_meta"].get("heavy_repeats"))
        results["_tree"] = res.get("_tree", results.get("_tree"))
        for key in ("_notes", "_fleet"):
            results.setdefault(key, {}).update(res.get(key, {}))
        for size in _sizes(res):
            results[size] = res[size]
            results.setdefault("_load", {})[size] = res.get("_load", {}).get(size, [])
            results["_meta"]["sources"][size] = (Path(doc.get("path", "?")).name, meta.get("argv", []))
    sizes = sorted(_sizes(results), key=int)
    ordered = {k: v for k, v in results.items() if k.startswith("_")}
    ordered.update({n: results[n] for n in sizes})
    return ordered, (saved[-1]["machine"] if saved else {})


def summarize(entry: dict) -> dict | None:
    runs = entry["runs"]
    if not runs:
        return None
    med = {k: statistics.median(r[k] for r in runs) for k in ("wall", "cpu", "tree_rss", "root_rss")}
    hosts = [r["host_cpu"] for r in runs if "host_cpu" in r]
    med["host_cpu"] = statistics.median(hosts) if hosts else None
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
            rows.append([t, "FAILED", "", "", "", "", "", "", "", "", e["failed"][:160]])
            continue
        if e["unavailable"] and not e["runs"]:
            rows.append([t, e["unavailable"], "", "", "", "", "", "", "", "", ""])
            continue
        m = meds[t]
        if m is None:
            continue
        extra_notes = list(e.get("notes") or [])
        if e["unavailable"]:
            extra_notes.append(e["unavailable"])
        ratio_floor = f"{m['wall'] / floor['wall']:.2f}×" if floor else "–"
        ratio_pb = f"{m['wall'] / pb['wall']:.2f}×" if pb else "–"
        cpu_floor = f"{m['cpu'] / floor['cpu']:.2f}×" if floor and floor["cpu"] > 0 else "–"
        host = f"{m['host_cpu']:.2f}" if m.get("host_cpu") is not None else "–"
        both_floor = "–"
        if floor and m.get("host_cpu") is not None and floor.get("host_cpu") is not None:
            both_floor = f"{(m['cpu'] + m['host_cpu']) / (floor['cpu'] + floor['host_cpu']):.2f}×"
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
        if m["n"] != max((len(x["runs"]) for x in entries.values()), default=0):
            extra_notes.append(f"median of {m['n']}")
        note = "; ".join([*([note] if note else []), *extra_notes])
        rows.append(
            [
                t,
                f"{m['wall']:.2f}",
                f"{m['cpu']:.2f}",
                host,
                f"{m['tree_rss'] / 2**20:.0f}",
                f"{m['root_rss'] / 2**20:.0f}",
                ratio_floor,
                ratio_pb,
                cpu_floor,
                both_floor,
                note,
            ]
        )
    return rows


HEAD = [
    "tool",
    "wall s",
    "CPU s",
    "hosts' CPU s",
    "peak tree MB",
    "controller MB",
    "wall × floor",
    "wall × playbook",
    "CPU × floor",
    "all CPU × floor",
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


def _generated_by(meta: dict) -> str:
    sources = meta.get("sources")
    if sources:
        # merged from several saved runs (--render A.json B.json)
        by_file: dict[str, tuple[list[str], list[str]]] = {}
        for n, (name, argv) in sources.items():
            by_file.setdefault(name, ([], argv))[0].append(n)
        parts = [
            f"N = {', '.join(ns)} from `bench/results/{name}` (`python3 bench/run.py {' '.join(argv)}`)"
            for name, (ns, argv) in by_file.items()
        ]
        return (
            "Rendered on "
            + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            + " from saved runs: "
            + "; ".join(parts)
            + f"; they took {meta['elapsed'] / 60:.1f} min in all."
        )
    return (
        "Generated by `python3 bench/run.py "
        + " ".join(meta["argv"])
        + "` on "
        + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        + f"; the whole bench took {meta['elapsed'] / 60:.1f} min."
    )


FINDINGS = Path(__file__).with_name("findings.md")
"""What was measured by hand, kept and dropped: copied into every report, so a render keeps it."""


def _findings() -> list[str]:
    try:
        text = FINDINGS.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return []
    return [text, ""] if text else []


def _shards(out_dir: Path | None) -> list[str]:
    """The sharded-run numbers `bench/shards.py` wrote into docs/scale.md, shown here too."""
    scale = Path(out_dir or "docs") / "scale.md"
    try:
        text = scale.read_text()
        block = text.split("<!-- bench:shards -->", 1)[1].split("<!-- /bench:shards -->", 1)[0].strip()
    except (OSError, IndexError):
        return []
    return [
        "## Sharded runs with the S3 state backend",
        "",
        "From [scale.md](scale.md#numbers) (what each request is for is explained there):",
        "",
        block,
        "",
    ]


def render(results: dict, ns, machine: dict[str, str], *, plot=None, out_dir: Path | None = None) -> str:
    """docs/benchmarks.md: machine, one table per fleet size and job, the scaling plot, the targets."""
    t = results["_tree"]
    meta = results["_meta"]
    heavy = meta.get("heavy_repeats")
    heavy_note = (
        f" Ansible and Ansible+Mitogen above N = 100: {heavy} run{'s' if heavy != 1 else ''} per job (one forked "
        "worker per host: see the memory columns)."
        if heavy and heavy < meta["repeats"]
        else ""
    )
    out = [
        "# Benchmarks",
        "",
        _generated_by(meta),
        "How to run it, what is measured and how: [bench/README.md](../bench/README.md).",
        "",
        f"Artifact: {t['files']} files, {t['bytes'] / 1e6:.1f} MB (seed {t['seed']}); the 1% change edits "
        f"{t['edited']} files, adds {t['added']} and removes {t['removed']}. The 20-small-steps job writes 10 "
        "small files with given content and runs 10 commands guarded by `creates` on every host "
        "(bench/steps.py). Fleet: N OpenSSH `sshd` on loopback "
        "addresses of this one machine (tests/harness/sshd.py), strict host key checking for every tool.",
        "",
        f"Medians of {meta['repeats']} run{'s' if meta['repeats'] != 1 else ''}.{heavy_note} *wall*: the tool's whole "
        "process; *CPU*: user+sys of its whole process "
        "tree; *hosts' CPU*: user+sys of everything the run made the hosts do (each connection's sshd and "
        "the shells, find or rsync it ran; all hosts are this machine, so this CPU competes with the tool's), "
        "from the sshd listeners' reaped children; *all CPU × floor*: CPU plus hosts' CPU, over the floor's; "
        "*peak tree*: the largest summed RSS of the tree (sampled every 20 ms; pages shared by forked "
        "workers are counted in each); *controller*: the peak RSS "
        "(VmHWM) of the tool's own top process alone, without the rsync/ssh children it spawns. Ratios are of wall "
        "time, except the two CPU ratios; when other work shares the machine (see the load average below) wall "
        "times scatter far more than CPU times. A tool whose run leaves any host's tree different from the "
        "source is FAILED and not timed.",
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
                "|" + "|".join(["---", *["---:"] * (len(HEAD) - 2), "---"]) + "|",
            ]
            out += ["| " + " | ".join(r) + " |" for r in rows]
            out.append("")
    out += _scaling(plot, out_dir)
    out += _targets(results, ns, machine)
    out += _findings()
    out += _shards(out_dir)
    notes = results.get("_notes", {})
    out += [
        "## How each tool is run",
        "",
        '- **rsync** (the floor): `bench/floor.py` starts `rsync -a --delete -e "ssh -o UserKnownHostsFile=… '
        '-o StrictHostKeyChecking=yes -i key -p port"` (dry run: `-n -i`; fan-out: `ssh host true`; 20 small '
        "steps: one `ssh host sh -s` per host running the same work as one shell script) to all "
        "hosts at once from one small Python process. Its ssh negotiates OpenSSH's default key exchange "
        "(sntrup761x25519 on OpenSSH 9, about 70 ms of client CPU per connection here); playbook's rsync asks for "
        "ecdh-sha2-nistp256 first, what its own paramiko connection negotiates with OpenSSH 9.2 (docs/connections.md).",
    ]
    pb_note = f"; {notes['playbook']}" if notes.get("playbook") else ""
    out += [
        "- **playbook**: `playbook run` (dry run: `playbook plan`) with an `rsync` step "
        f"(`delete: true`, `releases: false`) or a `command` step, `--forks N`{pb_note}; the 20 small steps are "
        "`command` steps, each `needs:` the one before (files: `shell: cat > f.tmp && mv f.tmp f` with the "
        "content on `stdin`, `unless:` its sha1 matches; commands: `creates:`); its packages "
        "byte-compiled first, as a regular `pip install` leaves them."
    ]
    for name, note in notes.items():
        if name != "playbook":
            out.append(f"- **{name}**: {note}.")
    out.append("")
    return "\n".join(out)


def _scaling(plot, out_dir: Path | None) -> list[str]:
    """The plot of wall time against N and the numbers drawn in it."""
    if plot is None:
        return []
    rel = plot.path.name
    if out_dir is not None:
        try:
            rel = os.path.relpath(plot.path, Path(out_dir).resolve())
        except ValueError:
            pass
    out = [
        "## How cost grows",
        "",
        f"![wall time against the number of hosts, fan-out and no-change re-run, every tool]({rel})",
        "",
        "Both axes logarithmic; each point is the median of the newest saved run that has it, the bar spans its "
        f"fastest and slowest run. Drawn by `python3 bench/run.py --plot` (matplotlib {MATPLOTLIB}) from "
        + ", ".join(f"`bench/results/{s}`" for s in plot.sources())
        + ".",
        "",
    ]
    for job, tools in plot.series.items():
        sizes = sorted({pt[0] for pts in tools.values() for pt in pts})
        out += [
            f"{JOB_TITLES[job]}, median wall s:",
            "",
            "| tool | " + " | ".join(f"N = {n}" for n in sizes) + " |",
            "|---|" + "---:|" * len(sizes),
        ]
        for tool, pts in tools.items():
            by_n = {pt[0]: pt[1] for pt in pts}
            out.append(f"| {tool} | " + " | ".join(f"{by_n[n]:.2f}" if n in by_n else "–" for n in sizes) + " |")
        out.append("")
    return out


def _med(results: dict, n: str, job: str, tool: str) -> dict | None:
    e = results.get(n, {}).get(job, {}).get(tool)
    return summarize(e) if e and not e["failed"] else None


# issue 16's targets: (job, N, most wall x floor) and (job, N, peer, at least x faster)
FLOOR_TARGETS = (
    ("nochange", "25", 0.25),
    ("dryrun", "25", 0.25),
    ("change", "25", 0.40),
    ("full", "25", 0.75),
    ("fanout", "25", 0.30),
    ("nochange", "200", 0.30),
    ("dryrun", "200", 0.30),
    ("change", "200", 0.45),
    ("fanout", "200", 0.20),
)
PEER_TARGETS = (
    ("nochange", "200", "pyinfra", 4.0),
    ("fanout", "200", "pyinfra", 1.5),
    ("steps", None, "ansible-mitogen", 5.0),
    ("steps-nochange", None, "ansible-mitogen", 5.0),
)


def _targets(results: dict, ns, machine: dict[str, str] | None = None) -> list[str]:
    """Issue 16's targets, each at the fleet size it names (the steps jobs: the largest N run)."""
    sizes = _sizes(results)
    if not sizes or "playbook" not in ns.tools:
        return []
    rows: list[tuple[str, str, str, str]] = []
    cores = cores_of(machine or {})

    def ratio(n: str, job: str, num: str, den: str) -> float | None:
        a, b = _med(results, n, job, num), _med(results, n, job, den)
        return a["wall"] / b["wall"] if a and b else None

    for job, n, most in FLOOR_TARGETS:
        v = ratio(n, job, "playbook", "rsync")
        label = f"N = {n}, {JOB_TITLES[job]}: playbook ≤ {most:.2f}× floor"
        bound = _cpu_bound(results, n, job, cores)
        shown = f"{bound:.2f}×" if bound is not None else "–"
        rows.append(
            (label, "–", shown, "not measured") if v is None else (label, f"{v:.2f}×", shown, _verdict(v <= most))
        )
    for job, named, peer, least in PEER_TARGETS:
        if named is None:
            have = [k for k in sizes if _med(results, k, job, "playbook") and _med(results, k, job, peer)]
            n = max(have, key=int) if have else max(sizes, key=int)
        else:
            n = named
        v = ratio(n, job, peer, "playbook")
        label = f"N = {n}, {JOB_TITLES[job]}: playbook ≥ {least:g}× faster than {peer}"
        rows.append(
            (label, "–", "", "not measured") if v is None else (label, f"{v:.1f}× faster", "", _verdict(v >= least))
        )
    if "200" in sizes:
        peaks = [m["root_rss"] for job in ns.jobs if (m := _med(results, "200", job, "playbook"))]
        label = "N = 200, playbook controller peak RSS ≤ 150 MB (any job)"
        if peaks:
            v = max(peaks) / 2**20
            rows.append((label, f"{v:.0f} MB", "", _verdict(v <= 150)))
        else:
            rows.append((label, "–", "", "not measured"))
    out = [
        "## Issue 16 targets",
        "",
        f"*CPU bound*: playbook's CPU plus its hosts' CPU, spread over the {cores} cores, as a ratio to the "
        "floor's wall time: the lowest wall × floor any schedule of that work could reach on this machine, "
        "where the hosts are the same cores.",
        "",
        "| target | measured | CPU bound | |",
        "|---|---:|---:|---|",
    ]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    out.append("")
    return out


def cores_of(machine: dict[str, str]) -> int:
    """The cores of the machine the results were measured on (this machine's when not recorded)."""
    try:
        return int(machine.get("cores") or os.cpu_count() or 1)
    except (TypeError, ValueError):
        return os.cpu_count() or 1


def _cpu_bound(results: dict, n: str, job: str, cores: int) -> float | None:
    """(playbook CPU + its hosts' CPU) / cores / floor wall: the lowest reachable wall × floor."""
    pb, floor = _med(results, n, job, "playbook"), _med(results, n, job, "rsync")
    if not pb or not floor or pb.get("host_cpu") is None or not floor["wall"]:
        return None
    return (pb["cpu"] + pb["host_cpu"]) / cores / floor["wall"]


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _load_rows(results: dict) -> list[str]:
    """The 1-minute load average seen before each timed run: other work on the machine skews wall times."""
    rows = []
    for n, loads in results.get("_load", {}).items():
        if loads:
            rows.append(
                f"| load average (1 min) before the N = {n} runs | min {min(loads):.1f}, "
                f"median {statistics.median(loads):.1f}, max {max(loads):.1f} "
                f"(on {os.cpu_count()} cores; the 1-minute average includes the bench's own preceding runs, so a "
                "high value alone does not mean other work shared the CPU) |"
            )
    return rows
