#!/usr/bin/env python3
"""Benchmark playbook against Ansible, pyinfra and plain parallel rsync on a real sshd fleet.

    python3 bench/run.py [--hosts 10,25,200:fanout+nochange] [--repeats 3] [--jobs ...] [--tools ...]
    python3 bench/run.py --render bench/results/A.json [B.json ...]   # re-render, run nothing
    python3 bench/run.py --plot [bench/results/A.json ...]             # redraw the scaling plot

See bench/README.md. Installs the peers into bench/.venvs when missing, starts N sshd hosts on
loopback (tests/harness/sshd.py), generates the artifact tree and its 1% mutation, then for
each N, job and repeat runs every tool once (interleaved, so drift hits all tools alike), each
from the state the job needs, and checks every host's tree afterwards. Prints the table and
writes it with the machine description to docs/benchmarks.md, and the wall time against N to
docs/bench-scaling.svg.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

import measure  # noqa: E402
import report  # noqa: E402
import scaling  # noqa: E402
import steps as stepjob  # noqa: E402
import tree  # noqa: E402
from peers import compile_playbook, ensure_peers  # noqa: E402
from tools import RUNNERS, FleetView, Target, make_runners  # noqa: E402

JOBS = ("full", "nochange", "change", "dryrun", "fanout", "steps", "steps-nochange")
# (area of each host the job works in, source tree the tool is given, state of that area before
# the run, state expected after). "emptydir": the area exists and is empty.
JOB_STATES = {
    "full": ("site", "base", "empty", "base"),
    "nochange": ("site", "base", "base", "base"),
    "change": ("site", "mut", "base", "mut"),
    "dryrun": ("site", "mut", "base", "base"),
    "fanout": ("site", "base", None, None),
    "steps": ("steps", "steps", "emptydir", "steps"),
    "steps-nochange": ("steps", "steps", "steps", "steps"),
}
# jobs whose run must not rewrite anything: every file keeps the reset's mtime
UNTOUCHED_JOBS = ("steps-nochange",)
# What `python3 bench/run.py` runs: every job at N = 10 and 25; the scaling plot's jobs at 50 and
# 100; at 200 every job but the full deploy (200 x 50 MB written per run and tool).
DEFAULT_HOSTS = "10,25,50:fanout+nochange,100:fanout+nochange,200:fanout+nochange+change+dryrun+steps+steps-nochange"
# Ansible forks one worker process per host: above this N it runs once per job (--heavy-repeats)
HEAVY_TOOLS = ("ansible", "ansible-mitogen")
HEAVY_N = 100
# pyinfra's files.sync takes a stat and a sha1 fact per file (one dry run at N = 25: 79-105 s),
# so by default it runs up to this N only; naming it in --tools runs it at every N
SLOW_TOOLS = {"pyinfra-sync": 25}


def _csv(value: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if allowed:
        bad = [v for v in items if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def _hosts(value: str) -> list[tuple[int, list[str] | None]]:
    """`10,25,200:fanout+nochange` -> [(10, None), (25, None), (200, ["fanout", "nochange"])]."""
    out: list[tuple[int, list[str] | None]] = []
    for item in _csv(value):
        n_text, _, jobs_text = item.partition(":")
        try:
            n = int(n_text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{n_text}' is not a host count (in '{item}')") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"a host count must be at least 1 (got {n})")
        jobs = None
        if jobs_text:
            jobs = [j for j in jobs_text.split("+") if j]
            bad = [j for j in jobs if j not in JOBS]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"unknown job {', '.join(bad)} in '{item}' (choose from {', '.join(JOBS)})"
                )
        out.append((n, jobs))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--hosts",
        default=DEFAULT_HOSTS,
        type=_hosts,
        help=f"fleet sizes, comma-separated; N:job+job runs only those jobs at that size (default {DEFAULT_HOSTS})",
    )
    p.add_argument("--repeats", type=int, default=3, help="runs per tool and job; medians reported (default 3)")
    p.add_argument(
        "--jobs", default=",".join(JOBS), type=lambda v: _csv(v, JOBS), help=f"jobs to run (default {','.join(JOBS)})"
    )
    p.add_argument(
        "--tools",
        type=lambda v: _csv(v, RUNNERS),
        help=f"tools to compare (default {','.join(RUNNERS)}; pyinfra-sync up to N = {SLOW_TOOLS['pyinfra-sync']} unless named)",
    )
    p.add_argument("--seed", type=int, default=8, help="seed of the artifact tree and its mutation (default 8)")
    p.add_argument("--workdir", type=Path, default=BENCH / ".work", help="scratch dir (default bench/.work)")
    p.add_argument(
        "--output",
        type=Path,
        default=REPO / "docs" / "benchmarks.md",
        help="Markdown report to write (default docs/benchmarks.md)",
    )
    p.add_argument("--no-write", action="store_true", help="print the table only; do not write --output")
    p.add_argument(
        "--results-dir",
        type=Path,
        default=BENCH / "results",
        help="where each run's raw numbers go, and --plot looks (default bench/results)",
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before a run is killed (default 1800)")
    p.add_argument(
        "--heavy-repeats",
        type=int,
        default=1,
        help=f"runs per job of {', '.join(HEAVY_TOOLS)} above N = {HEAVY_N} (default 1; at most --repeats)",
    )
    p.add_argument(
        "--mem-reserve",
        type=float,
        default=2.0,
        metavar="GiB",
        help="keep this much memory available: a tool whose estimate does not fit is not run, a run "
        "that brings MemAvailable below it is killed and reported (default 2)",
    )
    p.add_argument(
        "--render",
        type=Path,
        nargs="+",
        metavar="RESULTS.json",
        help="run nothing: re-render --output (and the plot) from saved bench/results/*.json; with several "
        "files, each fleet size is taken from the newest file that has it",
    )
    p.add_argument(
        "--plot",
        type=Path,
        nargs="*",
        metavar="RESULTS.json",
        help="run nothing: redraw --plot-output from saved results (default: every bench/results/*.json, "
        "newest first for each point)",
    )
    p.add_argument(
        "--no-plot", action="store_true", help="do not draw the scaling plot (after a run, or with --render)"
    )
    p.add_argument(
        "--plot-output",
        type=Path,
        default=REPO / "docs" / "bench-scaling.svg",
        help="the scaling plot to write (default docs/bench-scaling.svg)",
    )
    ns = p.parse_args(argv)
    ns.tools_named = ns.tools is not None
    ns.tools = ns.tools or list(RUNNERS)
    if ns.repeats < 1:
        p.error("--repeats must be at least 1")
    if ns.heavy_repeats < 1:
        p.error("--heavy-repeats must be at least 1")
    return ns


def jobs_at(ns: argparse.Namespace, size_jobs: list[str] | None) -> list[str]:
    """The jobs to run at one fleet size: --jobs, narrowed by that size's own list if it has one."""
    return [j for j in ns.jobs if size_jobs is None or j in size_jobs]


def area_dir(h: Target, area: str) -> Path:
    """The directory of host `h` that a job's area names (`site`: the synced tree; `steps`)."""
    return h.dest if area == "site" else h.steps


class Targets:
    """Puts every host's deploy dirs into a known state, fast (local rsync; the hosts are local dirs).
    Each area (`site`, `steps`) has its own state."""

    def __init__(self, hosts: list[Target], trees: dict[str, Path]) -> None:
        self.hosts = hosts
        self.trees = trees
        self.state: dict[str, str | None] = {}  # area -> state; missing or None = unknown

    def _each(self, fn) -> None:
        with ThreadPoolExecutor(max_workers=4) as ex:
            list(ex.map(fn, self.hosts))

    def reset(self, area: str, want: str) -> None:
        if want in ("empty", "emptydir"):

            def clear(h: Target) -> None:
                shutil.rmtree(area_dir(h, area), ignore_errors=True)
                if want == "emptydir":
                    area_dir(h, area).mkdir(parents=True)

            self._each(clear)
        else:
            src = f"{self.trees[want]}/"
            wipe = self.state.get(area) not in ("base", "mut", "steps")

            def one(h: Target) -> None:
                dest = area_dir(h, area)
                if wipe:
                    shutil.rmtree(dest, ignore_errors=True)
                # -a with --delete: also restores mtimes/perms a tool may have changed, so every
                # tool starts a no-change run from byte- and metadata-identical targets
                subprocess.run(["rsync", "-a", "--delete", src, f"{dest}/"], check=True)

            self._each(one)
        self.state[area] = want

    def forget(self, area: str) -> None:
        self.state[area] = None


def check_trees(
    hosts: list[Target], expected: dict[str, str], area: str = "site", ignore: tuple[str, ...] = ()
) -> str | None:
    """None when every host's area holds exactly `expected`; else the first host's differences."""
    cache = tree.DigestCache.shared()

    def one(h: Target) -> str | None:
        why = tree.compare(expected, area_dir(h, area), ignore, cache=cache)
        return f"{h.name}: {why}" if why else None

    # hashing releases the GIL: a few hosts at once keep both cores busy at N = 200
    with ThreadPoolExecutor(max_workers=4) as ex:
        for why in ex.map(one, hosts):
            if why:
                return why
    return None


def check_untouched(hosts: list[Target], area: str, mtime: int) -> str | None:
    """None when no file of any host's area was rewritten (all keep the reset's mtime)."""
    for h in hosts:
        root = area_dir(h, area)
        for d, _, files in os.walk(root):
            for f in files:
                p = os.path.join(d, f)
                if int(os.stat(p).st_mtime) != mtime:
                    return f"{h.name}: {os.path.relpath(p, root)} was rewritten by a run that had nothing to do"
    return None


def diff_coverage(output: str, mutation: tree.Mutation) -> tuple[int, int]:
    """How many of the mutated paths the dry run's output names (a per-file diff names them all)."""
    paths = mutation.paths
    return sum(1 for p in paths if p in output), len(paths)


def _mem_available() -> int:
    return measure.mem_available()


def _estimate_memory(results: dict, n: int, job: str, tool: str) -> tuple[int, int] | None:
    """(bytes this run would take from MemAvailable, the N it is scaled from), from the largest
    smaller fleet this tool already ran this job on (memory grows with the workers, ~linearly in N)."""
    best = None
    for size, jobs in results.items():
        if size.startswith("_") or int(size) >= n:
            continue
        runs = jobs.get(job, {}).get(tool, {}).get("runs") or []
        used = max((r.get("mem_used", 0) for r in runs), default=0)
        if used and (best is None or int(size) > best[1]):
            best = (used, int(size))
    if best is None:
        return None
    used, size = best
    return int(used * n / size), size


def run_n(
    n: int,
    size_jobs: list[str] | None,
    ns: argparse.Namespace,
    trees: dict[str, Path],
    manifests: dict[str, dict[str, str]],
    mutation: tree.Mutation,
    peers,
    results: dict,
) -> None:
    from tests.harness.sshd import SshdFleet

    fleet_dir = ns.workdir / f"fleet-{n}"
    shutil.rmtree(fleet_dir, ignore_errors=True)
    t0 = time.monotonic()
    reserve = int(ns.mem_reserve * 2**30)
    with SshdFleet(n, fleet_dir) as fleet:
        up = time.monotonic() - t0
        print(f"\n== N={n}: {n} sshd up on port {fleet.port} in {up:.1f}s", flush=True)
        results.setdefault("_fleet", {})[str(n)] = {"startup": up}
        hosts = [Target(h.name, h.address, h.port, h.data_dir) for h in fleet]
        listeners = [h.pid for h in fleet if h.pid]
        view = FleetView(hosts, fleet.client_key, fleet.known_hosts, fleet_dir / "configs")
        runners = make_runners(ns.tools, view, peers, lambda path: fleet.write_inventory(path, group="web"))
        targets = Targets(hosts, trees)
        logs = ns.workdir / "logs" / f"n{n}"
        logs.mkdir(parents=True, exist_ok=True)
        res_n = results.setdefault(str(n), {})
        load = results.setdefault("_load", {}).setdefault(str(n), [])
        for job in jobs_at(ns, size_jobs):
            area, src_key, before, after = JOB_STATES[job]
            res_job = res_n.setdefault(job, {})
            for rep in range(ns.repeats):
                for name, runner in runners.items():
                    entry = res_job.setdefault(name, {"runs": [], "failed": None, "unavailable": None, "notes": []})
                    why_not = runner.unavailable_for(job)
                    if why_not:
                        entry["unavailable"] = why_not
                        continue
                    if entry["failed"] or entry["unavailable"]:
                        continue  # a tool that broke the tree once is not timed again for this job
                    heavy = min(ns.heavy_repeats, ns.repeats)
                    if name in HEAVY_TOOLS and n > HEAVY_N and rep >= heavy:
                        note = f"{heavy} run{'s' if heavy != 1 else ''} at N > {HEAVY_N} (--heavy-repeats: memory)"
                        if note not in entry["notes"]:
                            entry["notes"].append(note)
                        continue
                    slow = SLOW_TOOLS.get(name)
                    if slow and n > slow and not ns.tools_named:
                        entry["unavailable"] = (
                            f"not run above N = {slow} by default (one stat and one sha1 fact per file; "
                            f"`--tools {name}` runs it)"
                        )
                        continue
                    est = _estimate_memory(results, n, job, name)
                    avail = _mem_available()
                    if est and avail and est[0] > avail - reserve:
                        entry["unavailable"] = (
                            f"not run: would need ~{est[0] / 2**30:.1f} GiB (scaled from N = {est[1]}), "
                            f"{avail / 2**30:.1f} GiB available, {ns.mem_reserve:g} GiB kept in reserve"
                        )
                        print(f"  N={n} {job:8} {name:8}: {entry['unavailable']}", flush=True)
                        continue
                    if before:
                        targets.reset(area, before)
                    run_dir = ns.workdir / "runs" / name
                    run_dir.mkdir(parents=True, exist_ok=True)
                    inv = runner.invocation(job, trees[src_key], run_dir)
                    log = logs / f"{job}-{name}-{rep + 1}"
                    # the previous run's or reset's dirty pages are written back now, not during this run
                    os.sync()
                    load.append(os.getloadavg()[0])
                    measure.wait_children_gone(listeners)
                    host0 = measure.host_cpu(listeners)
                    m = measure.run_measured(
                        inv.argv, env=inv.env, cwd=inv.cwd, timeout=ns.timeout, log=log, min_available=reserve
                    )
                    # the hosts' side: every connection's sshd and what it ran, reaped by the listeners
                    if measure.wait_children_gone(listeners):
                        m.extra["host_cpu"] = measure.host_cpu(listeners) - host0
                    problem = None
                    if m.extra.get("killed"):
                        problem = m.extra["killed"]
                    elif m.rc not in inv.ok_rc:
                        tail = (m.stderr.strip() or m.stdout.strip()).splitlines()[-3:]
                        problem = f"exit {m.rc}: {' | '.join(tail)[:300]}"
                    elif after:
                        problem = check_trees(hosts, manifests[after], area)
                        if not problem and job in UNTOUCHED_JOBS:
                            problem = check_untouched(hosts, area, stepjob.BASE_MTIME)
                    if after:
                        if problem:
                            targets.forget(area)
                        else:
                            targets.state[area] = after  # verified: the next reset only fixes metadata
                    if problem:
                        entry["failed"] = problem
                        print(f"  N={n} {job:8} {name:8} #{rep + 1}: FAILED {problem} (log {log}.*)", flush=True)
                        continue
                    if job == "dryrun":
                        found, total = diff_coverage(m.stdout + m.stderr, mutation)
                        m.extra["diff_paths"] = [found, total]
                    entry["runs"].append(
                        {
                            "wall": m.wall,
                            "cpu": m.cpu,
                            "tree_rss": m.peak_tree_rss,
                            "root_rss": m.peak_root_rss,
                            "rc": m.rc,
                            **m.extra,
                        }
                    )
                    extra = (
                        f" diff names {m.extra['diff_paths'][0]}/{m.extra['diff_paths'][1]} changed paths"
                        if "diff_paths" in m.extra
                        else ""
                    )
                    checked = f" {n} hosts checked" if after else ""
                    print(
                        f"  N={n} {job:8} {name:8} #{rep + 1}: wall {m.wall:7.2f}s  cpu {m.cpu:7.2f}s  "
                        f"hosts' cpu {m.extra.get('host_cpu', float('nan')):6.2f}s  "
                        f"tree {m.peak_tree_rss / 2**20:7.0f} MB  root {m.peak_root_rss / 2**20:5.0f} MB  "
                        f"mem used {m.extra.get('mem_used', 0) / 2**20:6.0f} MB{extra}{checked}",
                        flush=True,
                    )
        for name, runner in runners.items():
            if runner.note:
                results.setdefault("_notes", {})[name] = runner.note


def _load_saved(paths: list[Path]) -> list[dict]:
    saved = []
    for path in paths:
        doc = json.loads(path.read_text())
        doc["path"] = str(path)
        doc["ns"] = parse_args(doc["results"]["_meta"]["argv"])  # the jobs and tools that run selected
        saved.append(doc)
    return saved


def render_saved(ns: argparse.Namespace) -> int:
    saved = _load_saved(sorted(ns.render))
    results, machine = report.merge(saved)
    view = argparse.Namespace(
        jobs=[j for j in JOBS if any(j in d["ns"].jobs for d in saved)],
        tools=[t for t in RUNNERS if any(t in d["ns"].tools for d in saved)],
    )
    print(report.render_terminal(results, view))
    if not ns.no_write:
        plot = None if ns.no_plot else draw_plot(saved, ns.plot_output)
        ns.output.write_text(report.render(results, view, machine, plot=plot, out_dir=ns.output.parent))
        print(f"wrote {ns.output}")
    return 0


def draw_plot(saved: list[dict], out: Path) -> scaling.Plot | None:
    """Redraw the scaling plot from saved results; None (and a message) when it cannot be drawn."""
    try:
        plot = scaling.draw(saved, out)
    except scaling.PlotError as exc:
        print(f"plot not drawn: {exc}", file=sys.stderr, flush=True)
        return None
    print(f"wrote {out} ({', '.join(f'{k}: {v} points' for k, v in plot.points_by_job().items())})", flush=True)
    return plot


def plot_saved(ns: argparse.Namespace) -> int:
    paths = ns.plot or sorted(ns.results_dir.glob("*.json"))
    if not paths:
        print("no saved results: run the bench first (bench/results/*.json)", file=sys.stderr)
        return 1
    return 0 if draw_plot(_load_saved(sorted(paths)), ns.plot_output) else 1


def _raise_nofile() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one (children inherit it): at N = 200 a tool
    holds a socket, pipes and its children's pipes per host, past the usual soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    if ns.render:
        return render_saved(ns)
    if ns.plot is not None:
        return plot_saved(ns)
    started = time.monotonic()
    measure.become_subreaper()
    soft, _ = _raise_nofile()
    biggest = max(n for n, _ in ns.hosts)
    if soft < 16 * biggest:
        print(f"warning: only {soft} open files allowed (ulimit -n); N = {biggest} may need {16 * biggest}", flush=True)
    ns.workdir = ns.workdir.resolve()
    ns.workdir.mkdir(parents=True, exist_ok=True)
    print("peers:", flush=True)
    peers = ensure_peers(set(ns.tools))
    if "playbook" in ns.tools:
        compile_playbook()
    print("artifact tree:", flush=True)
    trees = {
        "base": ns.workdir / "trees" / "base",
        "mut": ns.workdir / "trees" / "mut",
        "steps": ns.workdir / "trees" / "steps",
    }
    all_jobs = {j for _, size_jobs in ns.hosts for j in jobs_at(ns, size_jobs)}
    # no job syncs the tree (the fan-out and steps jobs only name it): a small stand-in will do
    spec = tree.TreeSpec if all_jobs & {"full", "nochange", "change", "dryrun"} else tree.SmallTreeSpec
    tree.generate(trees["base"], ns.seed, spec)
    mutation = tree.mutate(trees["base"], trees["mut"], ns.seed, spec)
    stepjob.expected(trees["steps"])
    manifests = {k: tree.manifest(v) for k, v in trees.items()}
    files = sum(1 for v in manifests["base"].values() if v != "<dir>")
    size = sum(p.stat().st_size for p in trees["base"].rglob("*") if p.is_file())
    print(
        f"  {files} files, {size / 1e6:.1f} MB; mutation: {len(mutation.edited)} edited, "
        f"{len(mutation.added)} added, {len(mutation.removed)} removed",
        flush=True,
    )
    results: dict = {
        "_tree": {
            "files": files,
            "bytes": size,
            "seed": ns.seed,
            "edited": len(mutation.edited),
            "added": len(mutation.added),
            "removed": len(mutation.removed),
        }
    }
    machine = report.machine_description(peers)
    machine["open files (ulimit -n)"] = str(soft)
    out_json = ns.results_dir / time.strftime("%Y%m%d-%H%M%S.json")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    results["_meta"] = {
        "elapsed": 0.0,
        "repeats": ns.repeats,
        "heavy_repeats": ns.heavy_repeats,
        "argv": sys.argv[1:] if argv is None else argv,
    }
    for n, size_jobs in ns.hosts:
        run_n(n, size_jobs, ns, trees, manifests, mutation, peers, results)
        results["_meta"]["elapsed"] = time.monotonic() - started
        # saved after every fleet size: an interrupted bench can still be rendered (--render)
        out_json.write_text(json.dumps({"results": results, "machine": machine}, indent=1))
    elapsed = time.monotonic() - started
    print()
    print(report.render_terminal(results, ns))
    print(f"bench took {elapsed / 60:.1f} min; results in {out_json}", flush=True)
    if not ns.no_write:
        # the plot shows this run's points, and older saved runs' for sizes this one did not run
        plot = None
        if not ns.no_plot:
            plot = draw_plot(_load_saved(sorted(ns.results_dir.glob("*.json"))), ns.plot_output)
        ns.output.parent.mkdir(parents=True, exist_ok=True)
        ns.output.write_text(report.render(results, ns, machine, plot=plot, out_dir=ns.output.parent))
        print(f"wrote {ns.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
