"""The 20-small-steps job: the same ten file writes and ten guarded commands for every tool.

Every host gets a directory `<root>/steps/` (created empty by the bench before the first run)
and, after the job, holds exactly what `expected(...)` writes: ten files written with given
content (idempotent: rewritten only when their content differs) and the outputs of ten shell
commands, each guarded by a `creates` path so a re-run does nothing. The work is described here
once; tools.py turns it into each tool's own idiom and floor.py runs `floor_script()` through one
`ssh host sh -s` per host.
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FileStep", "CommandStep", "STEPS", "expected", "floor_script"]

BASE_MTIME = 1_704_067_200  # the reset's mtime; a no-change re-run must leave it alone


@dataclass(frozen=True)
class FileStep:
    """Write `content` to `path` (relative to the steps dir) unless it already holds exactly that."""

    id: str
    path: str
    content: str


@dataclass(frozen=True)
class CommandStep:
    """Run `shell` in the steps dir unless `creates` exists; `outputs` is what it leaves behind."""

    id: str
    shell: str
    creates: str
    outputs: dict[str, str]  # relative path -> content ("" with a trailing "/" key: a directory)


def _steps() -> tuple[FileStep | CommandStep, ...]:
    out: list[FileStep | CommandStep] = []
    for i in range(1, 11):
        lines = [f"# managed by the bench, step {i}", f"name = service{i:02d}", f"port = {8000 + i}"]
        lines += [f"option_{k} = value-{i}-{k}" for k in range(6)]
        out.append(FileStep(f"file{i:02d}", f"file{i:02d}.conf", "\n".join(lines) + "\n"))
    for i in range(1, 11):
        if i % 2:
            # a pipeline into a file
            shell = f"printf 'step %s done\\n' {i} | tr a-z A-Z > cmd{i:02d}.out"
            outputs = {f"cmd{i:02d}.out": f"STEP {i} DONE\n"}
            creates = f"cmd{i:02d}.out"
        else:
            # a directory and a marker in it, the marker written last
            shell = f"mkdir -p dir{i:02d}/sub && printf '%s\\n' {i} > dir{i:02d}/sub/marker"
            outputs = {f"dir{i:02d}/": "", f"dir{i:02d}/sub/": "", f"dir{i:02d}/sub/marker": f"{i}\n"}
            creates = f"dir{i:02d}/sub/marker"
        out.append(CommandStep(f"cmd{i:02d}", shell, creates, outputs))
    return tuple(out)


STEPS = _steps()


def expected(root: str | os.PathLike) -> Path:
    """Write under `root` what every host's steps dir must hold after the job (mtimes fixed)."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for s in STEPS:
        files = {s.path: s.content} if isinstance(s, FileStep) else s.outputs
        for rel, content in files.items():
            p = root / rel
            if rel.endswith("/"):
                p.mkdir(parents=True, exist_ok=True)
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content)
            os.utime(p, (BASE_MTIME, BASE_MTIME))
    for d, _, _ in os.walk(root, topdown=False):
        os.utime(d, (BASE_MTIME, BASE_MTIME))
    return root


def floor_script() -> str:
    """The whole job as one POSIX shell script, run as `sh -s DIR` (the floor: one ssh per host)."""
    lines = ["set -e", 'cd "$1"']
    for s in STEPS:
        if isinstance(s, FileStep):
            c = shlex.quote(s.content)
            p = shlex.quote(s.path)
            # same idempotence as the tools: compare the content, write to a temp file and rename
            lines.append(f"printf %s {c} | cmp -s - {p} || {{ printf %s {c} > {p}.tmp && mv {p}.tmp {p}; }}")
        else:
            lines.append(f"test -e {shlex.quote(s.creates)} || {{ {s.shell}; }}")
    return "\n".join(lines) + "\n"
