"""A command's output is kept up to `MAX_OUTPUT` bytes per stream and the rest read and dropped,
locally and over SSH (tests/integration/test_ssh_connection.py), so a command that prints without
end cannot fill the controller's memory. A 300 MB output took 1.36 GB of the controller and
300 MB of history before."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.connection import local
from engine.connection.local import LocalConnection
from engine.errors import CommandTimeout

ROOT = Path(__file__).resolve().parents[3]
MIB = 1024 * 1024


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(local, "MAX_OUTPUT", MIB)


def test_output_past_the_limit_is_read_and_dropped(small_limit):
    res = LocalConnection().run(
        ["sh", "-c", "head -c 5242880 /dev/zero | tr '\\0' a; head -c 3145728 /dev/zero | tr '\\0' e >&2; exit 3"]
    )
    assert res.rc == 3
    assert res.stdout == b"a" * MIB and res.stderr == b"e" * MIB
    assert res.dropped == 4 * MIB + 2 * MIB


def test_under_the_limit_nothing_changes(small_limit):
    data = os.urandom(MIB // 2)
    res = LocalConnection().run(["sh", "-c", "cat; printf done >&2"], stdin=data)
    assert (res.rc, res.stdout, res.stderr, res.dropped) == (0, data, b"done", 0)
    # a command that exits without reading its stdin
    assert LocalConnection().run(["true"], stdin=os.urandom(4 * MIB)).rc == 0


def test_endless_output_ends_at_the_timeout_with_the_group_killed(small_limit):
    with pytest.raises(CommandTimeout, match="timed out after 1s"):
        LocalConnection().run(["yes"], timeout=1)


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")
def test_a_run_whose_command_prints_2_gb_stays_bounded(tmp_path: Path):
    (tmp_path / "inv.yml").write_text("hosts:\n  a: {connection: local}\n")
    (tmp_path / "pb.yml").write_text(
        "name: loud\ninventory: inv.yml\nsteps:\n  - id: loud\n    module: command\n    fleet: controller\n"
        "    args: {shell: \"head -c 2147483648 /dev/zero | tr '\\\\0' x\"}\n"
    )
    proc = subprocess.run(
        ["prlimit", f"--as={1536 * MIB}", sys.executable, "-m", "engine.cli", "run", "pb.yml", "--format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PLAYBOOK_STATE_DIR": str(tmp_path / "state")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"[playbook: {2048 * MIB - 64 * MIB} more bytes of output were not kept]" in proc.stdout


def test_a_file_over_the_limit_is_refused_not_cut(small_limit, tmp_path: Path):
    from engine.errors import ModuleError

    (tmp_path / "big").write_bytes(b"x" * (MIB + 1))
    (tmp_path / "ok").write_bytes(b"x" * MIB)
    assert LocalConnection().get(str(tmp_path / "ok")) == b"x" * MIB
    for path in (str(tmp_path / "big"), "/dev/zero"):  # /dev/zero never ends
        with pytest.raises(ModuleError, match="is over 1048576 bytes"):
            LocalConnection().get(path)
