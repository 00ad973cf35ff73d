"""A selection of zero hosts is an error (issue 15, item 4): a `--limit` or a fleet pattern that
selects no host exits 1 naming the pattern and the nearest host and group names, for `plan`,
`run` and `validate`, before anything runs. A CI job must not read "succeeded on 0 hosts" as
deployed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from engine.cli import main

pytestmark = pytest.mark.fleet

MARK = """\
    fleets:
      web: {hosts: "%s"}
    steps:
      - id: mark
        module: command
        fleet: web
        args:
          argv: [sh, -c, 'echo ran > "$1"', sh, "{{ root }}/marker"]
    """


@pytest.fixture
def inventory(sshd_fleet, tmp_path):
    inv_path = sshd_fleet.write_inventory(tmp_path / "inventory.yml")
    inv = yaml.safe_load(inv_path.read_text())
    inv["groups"]["db"] = {"hosts": []}  # a group with no member yet
    inv_path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return inv_path


def _playbook(tmp_path: Path, hosts: str) -> Path:
    pb = tmp_path / "pb.yml"
    pb.write_text(textwrap.dedent(MARK % hosts))
    return pb


def _untouched(fleet) -> None:
    for h in fleet:
        (h.data_dir / "marker").unlink(missing_ok=True)


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_limit_that_selects_no_host_exits_1_naming_it_and_the_nearest_names(
    command, sshd_fleet, inventory, tmp_path, capsys
):
    _untouched(sshd_fleet)
    pb = _playbook(tmp_path, "web")
    code = main([command, str(pb), "-i", str(inventory), "--limit", "hots0*", "--state-dir", str(tmp_path / "s")])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert "'hots0*'" in err and "no host" in err
    assert "host01" in err  # the nearest names
    assert "succeeded" not in out + err and "Traceback" not in out + err
    assert not any((h.data_dir / "marker").exists() for h in sshd_fleet)


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_limit_outside_every_fleet_exits_1(command, sshd_fleet, inventory, tmp_path, capsys):
    pb = _playbook(tmp_path, "host01")
    code = main([command, str(pb), "-i", str(inventory), "--limit", "host02", "--state-dir", str(tmp_path / "s")])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert "--limit 'host02'" in err and "host01" in err
    assert not any((h.data_dir / "marker").exists() for h in sshd_fleet)


@pytest.mark.parametrize("command", ["plan", "run", "validate"])
def test_a_fleet_pattern_that_selects_no_host_is_a_located_error(command, sshd_fleet, inventory, tmp_path, capsys):
    _untouched(sshd_fleet)
    pb = _playbook(tmp_path, "db")
    argv = [command, str(pb), "-i", str(inventory)]
    if command != "validate":
        argv += ["--state-dir", str(tmp_path / "s")]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert f"{pb}:2:" in err  # the fleet's line
    assert "fleets.web" in err and "'db'" in err and "no host" in err
    assert not any((h.data_dir / "marker").exists() for h in sshd_fleet)


def test_a_limit_selecting_hosts_of_one_fleet_still_runs_there(sshd_fleet, inventory, tmp_path, capsys):
    _untouched(sshd_fleet)
    pb = _playbook(tmp_path, "web")
    code = main(["run", str(pb), "-i", str(inventory), "--limit", "host02", "--state-dir", str(tmp_path / "s")])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert [h.name for h in sshd_fleet if (h.data_dir / "marker").exists()] == ["host02"]
