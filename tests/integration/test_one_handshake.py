"""One SSH handshake per host per command, counted where it happens: in each sshd's own log.

rsync rides the engine's open connection (engine/connection/relay.py) instead of opening its
own, so a deploy that syncs a tree, runs commands and switches releases authenticates once per
host, whatever the number of steps. sshd logs every accepted authentication at INFO.
"""

from __future__ import annotations

import shutil
import textwrap

import pytest

from engine.cli import main

pytestmark = pytest.mark.fleet

PLAYBOOK = """\
    name: handshakes
    sources:
      site: {type: local, path: site}
    fleets:
      web: {hosts: web}
    steps:
      - id: sync
        module: rsync
        fleet: web
        args: {src: "{{ sources.site.path }}", dest: "{{ root }}/app", releases: true, keep: 2}
      - id: stamp
        module: command
        fleet: web
        needs: [sync]
        args:
          argv: [sh, -c, 'echo "$1" > "$2"', sh, "{{ tag }}", "{{ root }}/stamp"]
          unless: test "$(cat {{ (root ~ '/stamp') | quote }} 2>/dev/null)" = {{ tag | quote }}
      - id: flush
        module: cache_clear
        fleet: web
        needs: [sync]
        args:
          command: [rm, -rf, "{{ root }}/cache"]
          only_if_changed: [sync]
    """


def accepted(fleet) -> dict[str, int]:
    return {h.name: h.log.read_text(errors="replace").count("Accepted publickey") for h in fleet}


@pytest.fixture
def fleet(fleet_factory):
    return fleet_factory(3, log_level="INFO")


def test_each_command_authenticates_once_per_host(fleet, tmp_path):
    site = tmp_path / "site"
    for i in range(30):
        (site / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (site / f"d{i % 3}" / f"f{i}.txt").write_text(f"file {i}\n")
    pb = tmp_path / "pb.yml"
    pb.write_text(textwrap.dedent(PLAYBOOK))
    inv = fleet.write_inventory(tmp_path / "inv.yml")
    common = ["-i", str(inv), "--state-dir", str(tmp_path / "state"), "--format", "json"]

    def count(argv: list[str], expect: int) -> dict[str, int]:
        before = accepted(fleet)
        assert main([*argv, *common]) == expect
        after = accepted(fleet)
        return {h: after[h] - before[h] for h in after}

    one = dict.fromkeys(fleet.names, 1)
    assert count(["plan", str(pb), "-e", "tag=a"], 2) == one
    assert count(["run", str(pb), "-e", "tag=a"], 0) == one  # full deploy: rsync included
    (site / "d0" / "f0.txt").write_text("changed\n")
    shutil.rmtree(site / "d2")
    assert count(["run", str(pb), "-e", "tag=b"], 0) == one  # a partial change
    assert count(["run", str(pb), "-e", "tag=b"], 0) == one  # nothing to do
