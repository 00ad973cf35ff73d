"""Located errors for inputs checked without a host (issue 15, item 3): a `--release-id` that is
not a plain name, vars that reference each other in a cycle (reported once, at the var), and a
local source directory that does not exist."""

from __future__ import annotations

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
        hosts:
          a: {}
          b:
            vars: {x: "{{ y }}", y: "{{ x }}"}
        groups:
          web: {hosts: [a, b]}
        """,
    )


def _marker_playbook(tmp_path: Path, marker: Path, vars_: str = "{}") -> Path:
    return write(
        tmp_path,
        "pb.yml",
        f"""\
        fleets:
          web: {{hosts: a}}
        vars: {vars_}
        steps:
          - id: first
            module: command
            fleet: web
            args: {{argv: [touch, "{marker}"]}}
        """,
    )


def _vars_errors(tmp_path: Path, inventory: Path, capsys, lines: str) -> tuple[Path, list[str]]:
    """`validate` a playbook whose `vars:` are `lines` (one var per line): its path and error lines."""
    pb = _marker_playbook(tmp_path, tmp_path / "t", ("\n" + lines).replace("\n", "\n          "))
    code = main(["validate", str(pb), "-i", str(inventory)])
    err = capsys.readouterr().err
    assert code == 1, err
    return pb, [ln for ln in err.splitlines() if ln.startswith("error:")]


@pytest.mark.parametrize("bad", ["a/b", "..", "rel 1", "../x", ".", "", "v1;x", "a..b"])
@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_release_id_that_is_not_a_plain_name_is_refused(tmp_path, inventory, capsys, bad, command):
    marker = tmp_path / "touched"
    pb = _marker_playbook(tmp_path, marker)
    code = main([command, str(pb), "-i", str(inventory), "--release-id", bad, "--state-dir", str(tmp_path / "s")])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert "--release-id" in err and repr(bad) in err and "Traceback" not in err
    assert not marker.exists()


def test_a_plain_release_id_is_used(tmp_path, inventory, capsys):
    marker = tmp_path / "touched"
    pb = _marker_playbook(tmp_path, marker)
    code = main(
        ["run", str(pb), "-i", str(inventory), "--release-id", "v1.2.3_rc-1", "--state-dir", str(tmp_path / "s")]
    )
    assert code == 0, capsys.readouterr()
    assert marker.exists()


def test_a_cycle_in_playbook_vars_is_located_at_the_var_once(tmp_path, inventory, capsys):
    pb, errors = _vars_errors(tmp_path, inventory, capsys, 'p: "{{ q }}"\nq: "{{ p }}"')
    assert len(errors) == 1, errors
    assert f"{pb}:4:3 vars.p" in errors[0] and "cycle: p -> q -> p" in errors[0]


def test_a_cycle_in_host_vars_is_located_at_the_host(tmp_path, inventory, capsys):
    pb = _marker_playbook(tmp_path, tmp_path / "t").read_text().replace("hosts: a", "hosts: web")
    (tmp_path / "pb.yml").write_text(pb)
    code = main(["validate", str(tmp_path / "pb.yml"), "-i", str(inventory)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{inventory}:4:3" in err and "hosts.b.vars.x" in err and "cycle: x -> y -> x" in err


@pytest.mark.parametrize(
    "value,message",
    [
        ('"{{ ( }}"', "template syntax error: unexpected '}'"),
        ('"{{ ' + "(" * 5000 + "1" + ")" * 5000 + ' }}"', "template syntax error: nested too deeply"),
    ],
)
def test_a_var_that_is_not_a_template_is_located_at_the_var_once(tmp_path, inventory, capsys, value, message):
    # it said "error: host a: : template syntax error ..." without a file, or "internal error: RecursionError"
    pb, errors = _vars_errors(tmp_path, inventory, capsys, f"p: {value}")
    assert len(errors) == 1, errors
    assert f"{pb}:4:3 vars.p: {message}" in errors[0]


def test_every_broken_var_is_reported_once_and_not_the_vars_that_use_it(tmp_path, inventory, capsys):
    # only the first was reported: fixing it showed the next one, run after run
    text = 'p: "{{ ( }}"\nq: "{{ nope }}"\nr: "{{ p }}/x"\ns: "{{ q ~ r }}"\nt: fine'
    pb, errors = _vars_errors(tmp_path, inventory, capsys, text)
    assert len(errors) == 2, errors
    assert f"{pb}:4:3 vars.p: template syntax error" in errors[0]
    assert f"{pb}:5:3 vars.q: undefined variable: 'nope'" in errors[1]


def test_a_chain_of_5000_vars_resolves(tmp_path, inventory, capsys):
    chain = "".join(f'\n  v{i}: "{{{{ v{i + 1} }}}}"' for i in range(5000)) + "\n  v5000: end"
    pb = _marker_playbook(tmp_path, tmp_path / "t", chain.replace("\n", "\n        "))
    code = main(["validate", str(pb), "-i", str(inventory)])
    assert code == 0, capsys.readouterr().err  # it was "internal error: RecursionError"


def test_a_missing_local_source_directory_is_located(tmp_path, inventory, capsys):
    pb = write(
        tmp_path,
        "pb.yml",
        """\
        sources:
          site: {type: local, path: ./no-such-dir}
        fleets:
          web: {hosts: a}
        steps:
          - {id: s, module: command, fleet: web, args: {argv: [echo, "{{ sources.site.path }}"]}}
        """,
    )
    code = main(["validate", str(pb), "-i", str(inventory)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{pb}:2:29 sources.site.path" in err and "does not exist" in err and str(tmp_path / "no-such-dir") in err
    (tmp_path / "no-such-dir").mkdir()
    assert main(["validate", str(pb), "-i", str(inventory)]) == 0, capsys.readouterr()
