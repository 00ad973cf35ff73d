"""How cost grows: wall time against N for the fan-out and no-change jobs, from saved results.

`draw(saved, out)` picks, for every (job, tool, N), the median of the newest saved run that has
it (bench/results/*.json, sorted by name, which is the time they were started), writes those
points as JSON and has bench/plot.py draw them with matplotlib from bench/.venvs/plot (installed
with a pinned version by peers.ensure_plot, so the bench itself needs nothing but the standard
library). The same points are returned for the Markdown table beside the plot.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from peers import MATPLOTLIB, ensure_plot

__all__ = ["PLOT_JOBS", "Plot", "PlotError", "points", "draw"]

BENCH = Path(__file__).resolve().parent
PLOT_JOBS = ("fanout", "nochange")
TOOL_ORDER = ("playbook", "ansible", "ansible-mitogen", "pyinfra", "pyinfra-sync", "rsync")


class PlotError(RuntimeError):
    """The plot could not be drawn (no points, or matplotlib could not be installed or run)."""


@dataclass
class Plot:
    """What was drawn: `series[job][tool]` = [(N, median wall, min wall, max wall, runs, source)]."""

    path: Path
    series: dict[str, dict[str, list[tuple[int, float, float, float, int, str]]]] = field(default_factory=dict)

    def points_by_job(self) -> dict[str, int]:
        return {job: sum(len(v) for v in tools.values()) for job, tools in self.series.items()}

    def sources(self) -> list[str]:
        return sorted({p[5] for tools in self.series.values() for pts in tools.values() for p in pts})


def points(saved: list[dict]) -> dict[str, dict[str, list[tuple[int, float, float, float, int, str]]]]:
    """The newest measurement of every (job, tool, N) among `saved` (oldest first)."""
    best: dict[tuple[str, str, int], tuple[int, float, float, float, int, str]] = {}
    for doc in saved:  # later files overwrite earlier ones
        res = doc["results"]
        src = Path(doc.get("path", "?")).name
        for size, jobs in res.items():
            if size.startswith("_"):
                continue
            for job in PLOT_JOBS:
                for tool, entry in jobs.get(job, {}).items():
                    if entry.get("failed") or not entry.get("runs"):
                        continue
                    walls = [r["wall"] for r in entry["runs"]]
                    n = int(size)
                    best[(job, tool, n)] = (n, statistics.median(walls), min(walls), max(walls), len(walls), src)
    out: dict[str, dict[str, list[tuple[int, float, float, float, int, str]]]] = {}
    for (job, tool, _), pt in sorted(best.items(), key=lambda kv: kv[0][2]):
        out.setdefault(job, {}).setdefault(tool, []).append(pt)
    for job in out:
        out[job] = {t: out[job][t] for t in sorted(out[job], key=lambda t: (TOOL_ORDER + (t,)).index(t))}
    return out


def draw(saved: list[dict], out: Path) -> Plot:
    """Draw `out` (SVG or PNG, by its suffix) from `saved` results; see the module docstring."""
    series = points(saved)
    if not series:
        raise PlotError(f"no {' or '.join(PLOT_JOBS)} results to plot in the saved runs")
    try:
        py = ensure_plot()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise PlotError(f"matplotlib {MATPLOTLIB} could not be installed into bench/.venvs/plot: {exc}") from exc
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"series": series, "jobs": list(PLOT_JOBS)}, fh)
        data = Path(fh.name)
    try:
        p = subprocess.run(
            [str(py), str(BENCH / "plot.py"), str(data), str(out)], capture_output=True, text=True, cwd=BENCH
        )
    finally:
        data.unlink(missing_ok=True)
    if p.returncode != 0:
        raise PlotError(f"bench/plot.py failed: {(p.stderr or p.stdout).strip()[-500:]}")
    return Plot(out, series)
