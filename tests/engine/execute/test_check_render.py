"""`validate` is complete (issue 15, item 3): every template is rendered at check time, for every
host of its fleet, with all vars known and upstream outputs as typed placeholders. Mistakes are
reported once (never per host), at the argument's own file:line:col, by `validate` and by
`plan`/`run` before any step has run."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from engine.cli import main


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture
def inventory(tmp_path):
    return write(
        tmp_path,
        "inv.yml",
        """\
        defaults: {connection: local}
        vars:
          app: {port: 8080, name: shop}
          flag: "on"
        hosts:
          a: {vars: {root: /tmp/a}}
          b: {vars: {root: /tmp/b, only_b: 1}}
        groups:
          web: {hosts: [a, b]}
        """,
    )


def _playbook(tmp_path: Path, marker: Path, args: str, *, module: str = "command", extra: str = "") -> Path:
    """A first step that touches `marker`, then a step with the arguments under test (line 13 on)."""
    args = args.replace("\n", "\n" + " " * 14)
    extra = extra.replace("\n", "\n" + " " * 8)
    return write(
        tmp_path,
        "pb.yml",
        f"""\
        fleets:
          web: {{hosts: web}}
        {extra or "vars: {}"}
        steps:
          - id: first
            module: command
            fleet: web
            args: {{argv: [touch, "{marker}"]}}
          - id: second
            module: {module}
            fleet: web
            args:
              {args}
        """,
    )


def _validate(pb: Path, inventory: Path, capsys) -> tuple[int, str]:
    code = main(["validate", str(pb), "-i", str(inventory)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in out + err
    return code, err


@pytest.mark.parametrize(
    ("args", "col", "words"),
    [
        ('argv: [echo, "{{ host.nmae }}"]', 20, ["'host' has no attribute 'nmae'", "did you mean 'name'"]),
        ('argv: [echo, "port {{ app.prot }}"]', 20, ["'app' has no attribute 'prot'", "did you mean 'port'"]),
        ("argv: [echo, \"{{ ''.__class__.__mro__ }}\"]", 20, ["sandbox"]),
        ('argv: [echo, "{{ nope }}"]', 20, ["undefined variable 'nope'"]),
        ('argv: "{{ app.name }}"', 13, ["'argv' must be list of string", "got string 'shop'"]),
    ],
    ids=["host-attribute", "var-attribute", "sandbox", "undefined", "type"],
)
def test_a_rendering_mistake_is_located_at_the_argument_once(tmp_path, inventory, capsys, args, col, words):
    pb = _playbook(tmp_path, tmp_path / "touched", args)
    code, err = _validate(pb, inventory, capsys)
    assert code == 1, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err  # not once per host
    assert f"{pb}:13:{col} steps.second.args.argv" in lines[0], err
    for word in words:
        assert word in lines[0], (word, err)
    assert "host a" not in err and "host b" not in err


def test_a_var_on_fed_to_a_boolean_argument_is_a_validate_error(tmp_path, inventory, capsys):
    pb = _playbook(tmp_path, tmp_path / "t", 'src: /tmp\ndest: /tmp/x\ndelete: "{{ flag }}"', module="rsync")
    code, err = _validate(pb, inventory, capsys)
    assert code == 1
    assert f"{pb}:15:15 steps.second.args.delete" in err
    assert "'delete' must be boolean (got string 'on')" in err


def test_a_mistake_on_some_hosts_names_them_once(tmp_path, inventory, capsys):
    pb = _playbook(tmp_path, tmp_path / "t", 'argv: [echo, "{{ only_b }}"]')
    code, err = _validate(pb, inventory, capsys)
    assert code == 1
    assert "undefined variable 'only_b' for host a" in err
    assert err.count("error:") == 1


@pytest.mark.parametrize("command", ["plan", "run"])
def test_plan_and_run_refuse_before_any_step_runs(tmp_path, inventory, capsys, command):
    marker = tmp_path / "touched"
    pb = _playbook(tmp_path, marker, 'argv: [echo, "{{ host.nmae }}"]')
    code = main([command, str(pb), "-i", str(inventory), "--state-dir", str(tmp_path / "state")])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{pb}:13:20" in err and "'host' has no attribute 'nmae'" in err
    assert not marker.exists()


def test_default_filter_works_in_host_step_arguments(tmp_path, inventory, capsys):
    pb = _playbook(
        tmp_path, tmp_path / "t", 'argv: [echo, "{{ maybe | default(\'x\') }}", "{{ app.missing | default(1) }}"]'
    )
    code, err = _validate(pb, inventory, capsys)
    assert code == 0, err


def test_declared_secrets_validate_without_their_values(tmp_path, inventory, capsys, monkeypatch):
    monkeypatch.delenv("VAL_TEST_TOKEN", raising=False)
    pb = _playbook(
        tmp_path,
        tmp_path / "t",
        'argv: [echo, "{{ token }}"]',
        extra="secrets:\n  token: {env: VAL_TEST_TOKEN}",
    )
    code, err = _validate(pb, inventory, capsys)
    assert code == 0, err


def test_upstream_outputs_are_typed_placeholders(tmp_path, inventory, capsys):
    args = 'argv: [echo, "{{ steps.first.rc + 1 }}", "{{ steps.first.stdout | upper }}/{{ host.nmae }}"]'
    pb = _playbook(tmp_path, tmp_path / "t", args)
    code, err = _validate(pb, inventory, capsys)
    assert code == 1
    assert err.count("error:") == 1 and "'host' has no attribute 'nmae'" in err  # the rest rendered fine


def test_a_referenced_output_must_exist_for_that_module(tmp_path, inventory, capsys):
    pb = _playbook(tmp_path, tmp_path / "t", 'argv: [echo, "{{ steps.first.stdot }}"]')
    code, err = _validate(pb, inventory, capsys)
    assert code == 1
    assert f"{pb}:13:20" in err
    assert re.search(r"step 'first' \(module command\) has no output 'stdot' \(did you mean 'stdout'\?\)", err), err


def test_changed_is_an_output_of_every_step_for_validate(tmp_path, inventory, capsys):
    pb = _playbook(tmp_path, tmp_path / "t", 'argv: [echo, "{{ steps.first.changed }}"]')
    code, err = _validate(pb, inventory, capsys)
    assert code == 0, err
