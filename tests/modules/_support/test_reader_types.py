"""The read-only clients are read-only by type: mypy, as the project runs it, rejects every
write a module's `plan` could attempt through the clients its PlanContext allows (a reader's
missing write methods, a writer built from a PlanContext, a reader where a writer is needed)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SNIPPET = """
from engine.module import PlanContext
from modules._support.git import Git, GitReader, commit
from modules._support.http import Http, HttpReader
from modules._support.kube import Kube, KubeReader


def plan(ctx: PlanContext) -> None:
    kube = KubeReader(ctx)
    kube.read("configmap", "canary-env")
    kube.patch("configmap", "canary-env", {}, "application/merge-patch+json")  # write
    kube.core.patch_namespaced_config_map("canary-env", "ns", {})  # write
    Kube(ctx)  # write
    git = GitReader(ctx, {})
    git.run("fetch")
    commit(git, ".", "message")  # write
    Git(ctx, {})  # write
    http = HttpReader(ctx)
    http.open("http://127.0.0.1/", timeout=1)
    http.send(http, timeout=1)  # write
    Http(ctx)  # write
"""


def test_mypy_rejects_every_write_through_a_plan_context(tmp_path):
    from mypy import api as mypy

    path = tmp_path / "sneaky_plan.py"
    path.write_text(SNIPPET)
    out, err, _rc = mypy.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(ROOT / ".mypy_cache"), str(path)]
    )
    flagged = {int(m.group(1)) for m in re.finditer(rf"{re.escape(path.name)}:(\d+): error", out)}
    wanted = {n for n, line in enumerate(SNIPPET.splitlines(), 1) if line.endswith("# write")}
    assert wanted and flagged == wanted, out + err


def test_the_snippet_is_valid_without_its_writes(tmp_path):
    """The same calls minus the writes type-check: the errors above are the writes, nothing else."""
    from mypy import api as mypy

    path = tmp_path / "plan.py"
    path.write_text("\n".join(line for line in SNIPPET.splitlines() if not line.endswith("# write")) + "\n")
    out, err, rc = mypy.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(ROOT / ".mypy_cache"), str(path)]
    )
    assert rc == 0, out + err
