#!/usr/bin/env python3
"""Sharded runs on one machine: a fleet in N shards against the S3 state backend (moto).

    python3 bench/shards.py [--hosts 100] [--shards 4] [--files 200] [--no-write]

Starts `--hosts` sshd on loopback (tests/harness/sshd.py) and moto's S3 server, then deploys a
small tree twice to fresh directories: once unsharded, once as `--shards` shard processes at
once followed by the coordinator, both with `--state s3://…`. Reports the wall time of each,
the state backend's requests per run by kind of object (the lock, the history index, the
journal, the budget; from `$PLAYBOOK_STATE_STATS`) and the backend's share of the processes'
time. Writes the table into docs/scale.md between its `bench:shards` markers. On one machine the
shards share its cores: the split shows what the coordination costs, not a speed-up (that
needs more machines).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.moto import MotoServer, fake_aws_env  # noqa: E402
from tests.harness.sshd import SshdFleet  # noqa: E402

PLAYBOOK = """\
name: bench-shards
sources:
  code: {type: local, path: "{{ tree }}"}
fleets:
  web: {hosts: web}
steps:
  - id: sync
    module: rsync
    fleet: web
    args: {src: "{{ sources.code.path }}", dest: "{{ root }}/{{ area }}", releases: true}
  - id: announce
    module: command
    fleet: controller
    needs: [sync]
    args: {argv: ["true"]}
"""


def _cli(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(REPO),
    )


def _wait(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"a run failed (exit {p.returncode}):\n{err[-2000:]}")


def _stats(path: Path) -> dict:
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    kinds: dict[str, int] = {}
    for line in lines:
        for k, v in line["by_kind"].items():
            kinds[k] = kinds.get(k, 0) + v
    return {
        "processes": len(lines),
        "requests": sum(x["requests"] for x in lines),
        "seconds": sum(x["seconds"] for x in lines),
        "by_kind": kinds,
    }


def main() -> int:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--no-write", action="store_true")
    ns = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    tree = work / "tree"
    for i in range(ns.files):
        p = tree / f"d{i % 10}" / f"f{i:04d}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"file {i}\n" * 40)
    (work / "pb.yml").write_text(PLAYBOOK)
    rows = []
    t0 = time.monotonic()
    with SshdFleet(ns.hosts, work / "fleet") as fleet, MotoServer() as moto, fake_aws_env(work / "aws"):
        up = time.monotonic() - t0
        import boto3

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=moto.endpoint).create_bucket(Bucket=bucket)
        state = f"s3://{bucket}/p?endpoint_url={moto.endpoint}"
        inv = fleet.write_inventory(work / "inv.yml")
        env = {**os.environ, "PYTHONPATH": str(REPO), "PLAYBOOK_LOCK_DIR": str(work / "locks")}
        for label, shards in (("unsharded", 0), (f"{ns.shards} shards + coordinator", ns.shards)):
            stats_file = work / f"stats-{shards}.jsonl"
            env_run = {**env, "PLAYBOOK_STATE_STATS": str(stats_file)}
            area = f"app{shards}"
            base = [str(work / "pb.yml"), "-i", str(inv), "-e", json.dumps({"tree": str(tree), "area": area})]
            base += ["--state", state, "--state-dir", str(work / f"state-{shards}"), "--release-id", "20261202T000000Z"]
            started = time.monotonic()
            if shards == 0:
                _wait([_cli(["run", *base], env_run)])
            else:
                rid = ["--run-id", f"bench{shards}"]
                _wait([_cli(["run", *base, "--shard", f"{i}/{shards}", *rid], env_run) for i in range(1, shards + 1)])
                _wait([_cli(["run", *base, "--shard", "coordinator", *rid], env_run)])
            wall = time.monotonic() - started
            s = _stats(stats_file)
            parts = max(1, s["processes"])
            rows.append((label, wall, s, parts))
            bad = [h.name for h in fleet if not (Path(h.data_dir) / area / "current").is_symlink()]
            if bad:
                raise SystemExit(f"{label}: not deployed on {bad[:5]}")
    table = [
        f"{ns.hosts} sshd hosts on loopback (up in {up:.0f} s), a {ns.files}-file tree, moto's S3 server in the "
        f"benchmark's process; {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end. `python3 bench/shards.py`.",
        "",
        "| run | wall time | backend requests (per part) | lock | index | journal | budget | other | backend share of process time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, wall, s, parts in rows:
        k = s["by_kind"]
        other = s["requests"] - sum(k.get(x, 0) for x in ("locks", "index", "journal", "budget"))
        share = s["seconds"] / (wall * parts) if wall else 0.0
        table.append(
            f"| {label} | {wall:.1f} s | {s['requests']} ({s['requests'] / parts:.1f}) | {k.get('locks', 0)} | "
            f"{k.get('index', 0)} | {k.get('journal', 0)} | {k.get('budget', 0)} | {other} | {share:.1%} |"
        )
    text = "\n".join(table) + "\n"
    print(text)
    if not ns.no_write:
        doc = REPO / "docs" / "scale.md"
        body = doc.read_text()
        new = re.sub(
            r"(<!-- bench:shards -->\n).*?(<!-- /bench:shards -->)",
            lambda m: m.group(1) + text + m.group(2),
            body,
            flags=re.S,
        )
        doc.write_text(new)
        print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
