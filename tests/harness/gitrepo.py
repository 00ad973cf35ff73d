"""Real git repositories for tests: a bare `main` remote seeded with files, a working clone to
land "someone else's" commits, and a race that lands one between a clone and a push.

The race uses a `git` shim first on PATH: on the first `git push` it sees, it commits and pushes
another change to the remote (with the real git, from the helper clone), then runs the real push,
which the remote rejects because it moved. That is the real rejection a concurrent push causes,
not a simulated one.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path

__all__ = ["GitRemote", "IDENTITY"]

IDENTITY = {
    "GIT_AUTHOR_NAME": "Other Dev",
    "GIT_AUTHOR_EMAIL": "other@example.test",
    "GIT_COMMITTER_NAME": "Other Dev",
    "GIT_COMMITTER_EMAIL": "other@example.test",
}
REAL_GIT = shutil.which("git") or "/usr/bin/git"


def _git(*argv: str, cwd: str | Path | None = None, env: Mapping[str, str] | None = None) -> str:
    e = {**os.environ, **IDENTITY, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", **(env or {})}
    proc = subprocess.run([REAL_GIT, *argv], cwd=cwd, env=e, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(argv)} failed: {proc.stderr}")
    return proc.stdout


class GitRemote:
    """A bare repository (`git init --bare -b main`) under `root`, reachable as `self.url`
    (`file://`, so shallow clones work), plus a helper clone for commits made "by others"."""

    def __init__(self, root: Path, files: Mapping[str, str]) -> None:
        self.root = Path(root)
        self.bare = self.root / "remote.git"
        self.work = self.root / "helper"
        _git("init", "--quiet", "--bare", "-b", "main", str(self.bare))
        _git("init", "--quiet", "-b", "main", str(self.work))
        for rel, text in files.items():
            p = self.work / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(text.encode())
        _git("add", "-A", cwd=self.work)
        _git("commit", "--quiet", "-m", "initial", cwd=self.work)
        _git("remote", "add", "origin", self.url, cwd=self.work)
        _git("push", "--quiet", "origin", "main", cwd=self.work)

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def head(self) -> str:
        return _git("rev-parse", "main", cwd=self.bare).strip()

    def count(self) -> int:
        return int(_git("rev-list", "--count", "main", cwd=self.bare).strip())

    def show(self, rel: str, rev: str = "main") -> str:
        return _git("show", f"{rev}:{rel}", cwd=self.bare)

    def log(self, fmt: str = "%an <%ae>|%cn <%ce>|%s", n: int = 1) -> list[str]:
        return _git("log", f"-{n}", f"--format={fmt}", "main", cwd=self.bare).splitlines()

    def diff(self, a: str, b: str = "main") -> str:
        """`git diff -U0` between two revisions, without the header lines."""
        out = _git("diff", "-U0", a, b, cwd=self.bare)
        return "\n".join(line for line in out.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---")))

    def commit_other(self, rel: str, text: str, message: str = "someone else's change") -> str:
        """Commit and push a change to `rel` from the helper clone; returns the new head."""
        _git("pull", "--quiet", "--ff-only", "origin", "main", cwd=self.work)
        p = self.work / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode())
        _git("add", "-A", cwd=self.work)
        _git("commit", "--quiet", "-m", message, cwd=self.work)
        _git("push", "--quiet", "origin", "main", cwd=self.work)
        return self.head()

    def race_shim(self, bin_dir: Path, rel: str, text: str, times: int = 1) -> Path:
        """Write a `git` shim into `bin_dir` that lands a commit of `rel` (`text`) on the remote
        before each of the first `times` pushes it sees; put `bin_dir` first on PATH to use it."""
        bin_dir.mkdir(parents=True, exist_ok=True)
        counter = bin_dir / "pushes"
        counter.write_text("0")
        script = bin_dir / "git"
        src = bin_dir / "race_content"
        src.write_bytes(text.encode())
        log = bin_dir / "race.log"
        script.write_text(f"""#!/bin/sh
# test shim: land a concurrent commit on the remote just before this push
if [ "$1" = push ]; then
  exec 9>>{counter}.lock
  flock 9
  n=$(cat {counter}); echo $((n + 1)) > {counter}
  if [ "$n" -lt {times} ]; then
    (
      unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_CONFIG_COUNT
      export GIT_AUTHOR_NAME="Other Dev" GIT_AUTHOR_EMAIL=other@example.test
      export GIT_COMMITTER_NAME="Other Dev" GIT_COMMITTER_EMAIL=other@example.test
      cd {self.work} || exit 1
      {REAL_GIT} pull --quiet --rebase origin main || exit 1
      mkdir -p "$(dirname {self.work / rel})"
      cp {src} {self.work / rel}
      echo "# race $n" >> {self.work / rel}
      {REAL_GIT} add -A && {REAL_GIT} commit --quiet -m "concurrent change $n" || exit 1
      for i in 1 2 3 4 5 6 7 8 9 10; do
        {REAL_GIT} push --quiet origin main && exit 0
        {REAL_GIT} pull --quiet --rebase origin main
      done
      exit 1
    ) >>{log} 2>&1 || {{ echo "test shim: could not land the concurrent commit (see {log})" >&2; exit 99; }}
  fi
  exec 9>&-
fi
exec {REAL_GIT} "$@"
""")
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return bin_dir

    def pushes_seen(self, bin_dir: Path) -> int:
        return int((bin_dir / "pushes").read_text())
