"""The bench's pieces end to end on a tiny fleet: fleet start-up, the 20-small-steps job from
empty and again with nothing to do, the fan-out, every host's tree checked after each run, the
results JSON, and the report rendered from it. Only playbook and the floor run (the peers need
their venvs; `python3 bench/run.py --hosts 10 --repeats 1` is the full check, see bench/README.md).
The bench runs as its own process: it makes itself a child subreaper, which must not leak into the
test session."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.sshd import SSHD

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.fleet


@pytest.mark.skipif(not Path(SSHD).exists(), reason="needs /usr/sbin/sshd")
def test_bench_runs_steps_and_fanout_on_two_hosts(tmp_path):
    results = tmp_path / "results"
    argv = [
        sys.executable,
        str(REPO / "bench" / "run.py"),
        "--hosts",
        "2",
        "--repeats",
        "1",
        "--jobs",
        "steps,steps-nochange,fanout",
        "--tools",
        "playbook,rsync",
        "--workdir",
        str(tmp_path / "work"),
        "--results-dir",
        str(results),
        "--output",
        str(tmp_path / "benchmarks.md"),
        "--no-plot",  # matplotlib lives in bench/.venvs/plot, installed on first use
    ]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "FAILED" not in p.stdout, p.stdout
    # every run that leaves state was checked on both hosts
    assert p.stdout.count("2 hosts checked") == 4, p.stdout
    saved = json.loads(next(results.glob("*.json")).read_text())["results"]
    for job in ("steps", "steps-nochange", "fanout"):
        for tool in ("playbook", "rsync"):
            entry = saved["2"][job][tool]
            assert entry["failed"] is None and len(entry["runs"]) == 1, (job, tool, entry)
            # the hosts' side was counted: two handshakes and what ran there cost some CPU
            assert entry["runs"][0]["host_cpu"] > 0, (job, tool, entry)
    md = (tmp_path / "benchmarks.md").read_text()
    assert "### 20 small steps, re-run with nothing to do" in md
    assert "| hosts' CPU s |" in md and "| all CPU × floor |" in md
    # the hand-written findings are carried into every report, so a render does not lose them
    findings = (REPO / "bench" / "findings.md").read_text().strip()
    assert findings.splitlines()[0] in md and findings.splitlines()[-1] in md
    # re-rendered from the saved run, still without the plot: the report again, no plot written
    plot = tmp_path / "plot.svg"
    again = tmp_path / "again.md"
    argv = [sys.executable, str(REPO / "bench" / "run.py"), "--render", str(next(results.glob("*.json")))]
    argv += ["--output", str(again), "--plot-output", str(plot), "--no-plot"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "### 20 small steps, re-run with nothing to do" in again.read_text() and not plot.exists()


def test_steps_floor_script_is_the_expected_tree(tmp_path):
    """The floor's shell script, run twice locally, leaves exactly bench/steps.py's expected tree
    and the second run rewrites nothing."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import steps
        import tree
    finally:
        sys.path.remove(str(REPO / "bench"))
    want = tree.manifest(steps.expected(tmp_path / "want"))
    got = tmp_path / "got"
    got.mkdir()
    script = steps.floor_script()
    subprocess.run(["sh", "-s", str(got)], input=script, text=True, check=True)
    assert tree.compare(want, got) is None
    before = {p: p.stat().st_mtime_ns for p in got.rglob("*") if p.is_file()}
    subprocess.run(["sh", "-s", str(got)], input=script, text=True, check=True)
    assert {p: p.stat().st_mtime_ns for p in got.rglob("*") if p.is_file()} == before
