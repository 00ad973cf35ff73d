"""`playbook lock release` breaks only a lock whose holder is known to be gone.

A holder on another controller cannot be seen from here: without `--force` its lock is kept,
as a live holder's is; `--force` (or `lock break`) removes it.
"""

from __future__ import annotations

import textwrap

import pytest

from engine.cli import main
from engine.connection.pool import ConnectionPool
from engine.execute.locks import LockInfo, acquire, default_lock_path, status
from engine.load.inventory import load_inventory

pytestmark = pytest.mark.fleet


def test_a_lock_from_another_controller_is_kept_without_force(sshd_fleet, tmp_path, capsys):
    pb = tmp_path / "pb.yml"
    pb.write_text(
        textwrap.dedent("""\
        fleets:
          web: {hosts: web}
        steps:
          - {id: noop, module: command, fleet: web, args: {argv: ["true"]}}
        """)
    )
    inv = sshd_fleet.write_inventory(tmp_path / "inv.yml")
    host = load_inventory(str(inv)).hosts[sshd_fleet.names[0]]
    path = default_lock_path("web")
    info = LockInfo.create(run_id="r-elsewhere", playbook="pb")
    info = LockInfo(info.owner, info.run_id, info.playbook, 4242, info.time, "another-controller")
    args = [str(pb), "-i", str(inv), "--limit", host.name]
    with ConnectionPool() as pool:
        conn = pool.get(host)
        acquire(conn, path, info)
        try:
            assert main(["lock", "release", *args]) == 1
            out = capsys.readouterr().out
            assert "kept" in out and "another controller" in out, out
            assert status(conn, path) is not None
            assert main(["lock", "release", *args, "--force"]) == 0
            assert status(conn, path) is None
        finally:
            main(["lock", "release", *args, "--force"])
