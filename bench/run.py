#!/usr/bin/env python3
"""Benchmark playbook against Ansible, pyinfra and plain parallel rsync on a real sshd fleet.

    python3 bench/run.py [--hosts 10,25] [--repeats 3] [--jobs ...] [--tools ...]

See bench/README.md. Installs the peers into bench/.venvs when missing, starts N sshd hosts on
loopback (tests/harness/sshd.py), generates the artifact tree and its 1% mutation, then for
each N, job and repeat runs every tool once (interleaved, so drift hits all tools alike), each
from the state the job needs, and checks every host's tree afterwards. Prints the table and
writes it with the machine description to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
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
import tree  # noqa: E402
from peers import compile_playbook, ensure_peers  # noqa: E402
from tools import RUNNERS, FleetView, Target, make_runners  # noqa: E402

JOBS = ("full", "nochange", "change", "dryrun", "fanout")
# (source tree the tool is given, state of the targets before the run, state expected after)
JOB_STATES = {
    "full": ("base", "empty", "base"),
    "nochange": ("base", "base", "base"),
    "change": ("mut", "base", "mut"),
    "dryrun": ("mut", "base", "base"),
    "fanout": ("base", None, None),
}


def _csv(value: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if allowed:
        bad = [v for v in items if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--hosts",
        default="10,25",
        type=lambda v: [int(x) for x in _csv(v)],
        help="fleet sizes to run, comma-separated (default 10,25)",
    )
    p.add_argument("--repeats", type=int, default=3, help="runs per tool and job; medians reported (default 3)")
    p.add_argument(
        "--jobs", default=",".join(JOBS), type=lambda v: _csv(v, JOBS), help=f"jobs to run (default {','.join(JOBS)})"
    )
    p.add_argument(
        "--tools",
        default=",".join(RUNNERS),
        type=lambda v: _csv(v, RUNNERS),
        help=f"tools to compare (default {','.join(RUNNERS)})",
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
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a run is killed (default 900)")
    p.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS.json",
        help="run nothing: re-render --output from a saved bench/results/*.json",
    )
    ns = p.parse_args(argv)
    if ns.repeats < 1:
        p.error("--repeats must be at least 1")
    return ns


class Targets:
    """Puts every host's deploy dir into a known state, fast (local rsync; the hosts are local dirs)."""

    def __init__(self, hosts: list[Target], trees: dict[str, Path]) -> None:
        self.hosts = hosts
        self.trees = trees
        self.state: str | None = None  # None = unknown

    def _each(self, fn) -> None:
        with ThreadPoolExecutor(max_workers=4) as ex:
            list(ex.map(fn, self.hosts))

    def reset(self, want: str) -> None:
        if want == "empty":
            self._each(lambda h: shutil.rmtree(h.dest, ignore_errors=True))
        else:
            src = f"{self.trees[want]}/"
            wipe = self.state not in ("base", "mut")

            def one(h: Target) -> None:
                if wipe:
                    shutil.rmtree(h.dest, ignore_errors=True)
                # -a with --delete: also restores mtimes/perms a tool may have changed, so every
                # tool starts a no-change run from byte- and metadata-identical targets
                subprocess.run(["rsync", "-a", "--delete", src, f"{h.dest}/"], check=True)

            self._each(one)
        self.state = want

    def forget(self) -> None:
        self.state = None


def check_trees(hosts: list[Target], expected: dict[str, str], ignore: tuple[str, ...] = ()) -> str | None:
    for h in hosts:
        why = tree.compare(expected, h.dest, ignore)
        if why:
            return f"{h.name}: {why}"
    return None


def diff_coverage(output: str, mutation: tree.Mutation) -> tuple[int, int]:
    """How many of the mutated paths the dry run's output names (a per-file diff names them all)."""
    paths = mutation.paths
    return sum(1 for p in paths if p in output), len(paths)


def run_n(
    n: int,
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
    with SshdFleet(n, fleet_dir) as fleet:
        print(f"\n== N={n}: {n} sshd up on port {fleet.port} in {time.monotonic() - t0:.1f}s", flush=True)
        hosts = [Target(h.name, h.address, h.port, h.data_dir) for h in fleet]
        view = FleetView(hosts, fleet.client_key, fleet.known_hosts, fleet_dir / "configs")
        runners = make_runners(ns.tools, view, peers, lambda path: fleet.write_inventory(path, group="web"))
        targets = Targets(hosts, trees)
        logs = ns.workdir / "logs" / f"n{n}"
        logs.mkdir(parents=True, exist_ok=True)
        res_n = results.setdefault(str(n), {})
        load = results.setdefault("_load", {}).setdefault(str(n), [])
        for job in ns.jobs:
            src_key, before, after = JOB_STATES[job]
            res_job = res_n.setdefault(job, {})
            for rep in range(ns.repeats):
                for name, runner in runners.items():
                    entry = res_job.setdefault(name, {"runs": [], "failed": None, "unavailable": None, "notes": []})
                    why_not = runner.unavailable_for(job)
                    if why_not:
                        entry["unavailable"] = why_not
                        continue
                    if entry["failed"]:
                        continue  # a tool that broke the tree once is not timed again for this job
                    if before:
                        targets.reset(before)
                    run_dir = ns.workdir / "runs" / name
                    run_dir.mkdir(parents=True, exist_ok=True)
                    inv = runner.invocation(job, trees[src_key], run_dir)
                    log = logs / f"{job}-{name}-{rep + 1}"
                    # the previous run's or reset's dirty pages are written back now, not during this run
                    os.sync()
                    load.append(os.getloadavg()[0])
                    m = measure.run_measured(inv.argv, env=inv.env, cwd=inv.cwd, timeout=ns.timeout, log=log)
                    problem = None
                    if m.rc not in inv.ok_rc:
                        tail = (m.stderr.strip() or m.stdout.strip()).splitlines()[-3:]
                        problem = f"exit {m.rc}: {' | '.join(tail)[:300]}"
                    elif after:
                        problem = check_trees(hosts, manifests[after])
                    if after:
                        if problem:
                            targets.forget()
                        else:
                            targets.state = after  # verified: the next reset only fixes metadata
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
                    print(
                        f"  N={n} {job:8} {name:8} #{rep + 1}: wall {m.wall:7.2f}s  cpu {m.cpu:7.2f}s  "
                        f"tree {m.peak_tree_rss / 2**20:7.0f} MB  root {m.peak_root_rss / 2**20:5.0f} MB{extra}",
                        flush=True,
                    )
        for name, runner in runners.items():
            if runner.note:
                results.setdefault("_notes", {})[name] = runner.note


def render_saved(ns: argparse.Namespace) -> int:
    saved = json.loads(ns.render.read_text())
    results, machine = saved["results"], saved["machine"]
    orig = parse_args(results["_meta"]["argv"])  # the jobs and tools that run selected
    print(report.render_terminal(results, orig))
    if not ns.no_write:
        ns.output.write_text(report.render(results, orig, machine))
        print(f"wrote {ns.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    if ns.render:
        return render_saved(ns)
    started = time.monotonic()
    measure.become_subreaper()
    ns.workdir = ns.workdir.resolve()
    ns.workdir.mkdir(parents=True, exist_ok=True)
    print("peers:", flush=True)
    peers = ensure_peers(set(ns.tools))
    if "playbook" in ns.tools:
        compile_playbook()
    print("artifact tree:", flush=True)
    trees = {"base": ns.workdir / "trees" / "base", "mut": ns.workdir / "trees" / "mut"}
    tree.generate(trees["base"], ns.seed)
    mutation = tree.mutate(trees["base"], trees["mut"], ns.seed)
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
    out_json = BENCH / "results" / time.strftime("%Y%m%d-%H%M%S.json")
    out_json.parent.mkdir(exist_ok=True)
    results["_meta"] = {"elapsed": 0.0, "repeats": ns.repeats, "argv": sys.argv[1:] if argv is None else argv}
    for n in ns.hosts:
        run_n(n, ns, trees, manifests, mutation, peers, results)
        results["_meta"]["elapsed"] = time.monotonic() - started
        # saved after every fleet size: an interrupted bench can still be rendered (--render)
        out_json.write_text(json.dumps({"results": results, "machine": machine}, indent=1))
    elapsed = time.monotonic() - started
    text = report.render(results, ns, machine)
    print()
    print(report.render_terminal(results, ns))
    print(f"bench took {elapsed / 60:.1f} min", flush=True)
    if not ns.no_write:
        ns.output.parent.mkdir(parents=True, exist_ok=True)
        ns.output.write_text(text)
        print(f"wrote {ns.output} and {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
