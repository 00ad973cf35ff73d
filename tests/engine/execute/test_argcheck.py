"""validate renders an argument with a fixed set of values when vars alone decide it."""

from __future__ import annotations

import textwrap

from engine.cli import main


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_a_templated_choice_outside_its_set_is_a_located_validate_error(tmp_path, capsys):
    inv = _write(
        tmp_path,
        "inv.yml",
        """\
        hosts:
          a: {connection: local, vars: {mode: deploy}}
          b: {connection: local, vars: {mode: promot}}
        groups: {k8s: {hosts: [a, b]}}
        """,
    )
    pb = _write(
        tmp_path,
        "pb.yml",
        """\
        fleets:
          k8s: {hosts: k8s}
        steps:
          - id: first
            module: canary_switch
            fleet: k8s
            args:
              action: "{{ mode }}"
          - id: later
            module: canary_switch
            fleet: k8s
            args:
              action: "{{ 'deploy' if steps.first.selector else 'bogus' }}"
        """,
    )
    assert main(["validate", pb, "-i", inv]) == 1
    err = capsys.readouterr().err
    assert f"{pb}:8:15 " in err and "steps.first.args.action: 'action' must be one of 'deploy'" in err, err
    assert "(got string 'promot') for host b" in err and err.count("must be one of") == 1, (
        err
    )  # once; `later` waits for run time
    assert main(["validate", pb, "-i", inv, "-e", "mode=pause"]) == 0
