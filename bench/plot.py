"""Draw the scaling plot: wall time against N, one panel per job, one line per tool.

    bench/.venvs/plot/bin/python bench/plot.py POINTS.json OUT.svg

Run by bench/scaling.py with the pinned matplotlib of bench/.venvs/plot; POINTS.json is what
`scaling.points` returns. Both axes are logarithmic, so equal slopes mean equal growth rates and
a line with slope 1 grows linearly in N; the bar on each point spans the fastest and slowest run.
The SVG is deterministic (no date, fixed element ids), so redrawing the same results changes no
byte.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator, ScalarFormatter  # noqa: E402

TITLES = {"fanout": "fan-out (`true` on every host)", "nochange": "no-change re-run (2,000-file tree)"}
STYLE = {
    "playbook": ("#1f77b4", "o", "-"),
    "ansible": ("#d62728", "s", "-"),
    "ansible-mitogen": ("#ff7f0e", "D", "-"),
    "pyinfra": ("#2ca02c", "^", "-"),
    "pyinfra-sync": ("#8c564b", "v", "-"),
    "rsync": ("#444444", "x", "--"),
}
LABELS = {"rsync": "floor (ssh / rsync)"}


def main() -> int:
    data = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    matplotlib.rcParams["svg.hashsalt"] = "playbook-bench"
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable
    jobs = [j for j in data["jobs"] if j in data["series"]]
    fig, axes = plt.subplots(1, len(jobs), figsize=(5.2 * len(jobs), 4.2), squeeze=False)
    sizes = sorted({p[0] for j in jobs for pts in data["series"][j].values() for p in pts})
    for ax, job in zip(axes[0], jobs):
        for tool, pts in data["series"][job].items():
            color, marker, line = STYLE.get(tool, ("#7f7f7f", ".", "-"))
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            lo = [p[1] - p[2] for p in pts]
            hi = [p[3] - p[1] for p in pts]
            ax.errorbar(
                xs,
                ys,
                yerr=[lo, hi],
                label=LABELS.get(tool, tool),
                color=color,
                marker=marker,
                linestyle=line,
                markersize=5,
                capsize=2,
                linewidth=1.4,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        # labels at 1, 2 and 5 of every decade: the times span two decades or more
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("hosts (N)")
        ax.set_ylabel("wall time, s (median)")
        ax.set_title(TITLES.get(job, job), fontsize=11)
        ax.grid(True, which="both", linewidth=0.4, alpha=0.5)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(out, metadata={"Date": None} if out.endswith(".svg") else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
