"""`validate` is complete (issue 15, item 3) against the real sshd fleet: a template mistake in a
later step fails `plan` and `run` with the argument's file:line:col, once, before the first step
ran on any host; the same playbook corrected runs everywhere."""

from __future__ import annotations

import textwrap

import pytest

from engine.cli import main

pytestmark = pytest.mark.fleet

PLAYBOOK = """\
    fleets:
      web: {hosts: web}
    steps:
      - id: first
        module: command
        fleet: web
        args:
          argv: [sh, -c, 'echo ran > "$1"', sh, "{{ root }}/first-ran"]
      - id: second
        module: command
        fleet: web
        args:
          argv: [echo, "{{ steps.first.stdout }}", "{{ host.%s }}"]
    """


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_mistake_in_a_later_step_fails_before_the_first_step_runs(command, sshd_fleet, tmp_path, capsys):
    inventory = sshd_fleet.write_inventory(tmp_path / "inventory.yml")
    for h in sshd_fleet:
        (h.data_dir / "first-ran").unlink(missing_ok=True)
    pb = tmp_path / "pb.yml"
    pb.write_text(textwrap.dedent(PLAYBOOK % "nmae"))
    base = ["-i", str(inventory), "--state-dir", str(tmp_path / "state")]
    code = main([command, str(pb), *base])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err  # once, not once per host
    assert f"{pb}:13:48 steps.second.args.argv[2]" in errors[0]
    assert "'host' has no attribute 'nmae' (did you mean 'name'?)" in errors[0]
    assert not any((h.data_dir / "first-ran").exists() for h in sshd_fleet)

    pb.write_text(textwrap.dedent(PLAYBOOK % "name"))
    assert main(["run", str(pb), *base]) == 0, capsys.readouterr()
    assert all((h.data_dir / "first-ran").exists() for h in sshd_fleet)
