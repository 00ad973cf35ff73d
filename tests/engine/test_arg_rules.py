"""Argument rules are declared on the argument definition (issue 15, item 3): `keep >= 1`,
"exactly one of argv and shell", a migration name's pattern... live in `arg()`, so the schema,
the docs, `validate` (also for values only known once rendered) and the module enforce the same
rule."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.argschema import build, enforce, schema_for
from engine.cli import main
from engine.docs import module_doc
from engine.errors import ArgError
from modules.canary_switch import CanaryArgs
from modules.command import CommandArgs
from modules.migrate import MigrateArgs
from modules.rsync import RsyncArgs


def test_the_schema_carries_the_rules():
    rsync = schema_for(RsyncArgs, templated=False)
    assert rsync["properties"]["keep"]["minimum"] == 1
    assert "At least 1." in rsync["properties"]["keep"]["description"]
    command = schema_for(CommandArgs, templated=True)
    assert command["oneOf"] == [{"required": ["argv"]}, {"required": ["shell"]}]
    name = schema_for(MigrateArgs, templated=True)["properties"]["name"]
    assert {
        "type": "string",
        "pattern": r"[A-Za-z0-9][A-Za-z0-9_.-]*",
        "x-expected": "letters, digits and _.-",
    } in name["anyOf"]


def test_the_docs_state_the_rules():
    assert "At least 1." in module_doc("rsync")
    assert "Give exactly one of 'argv' and 'shell'." in module_doc("command")


@pytest.mark.parametrize(
    ("cls", "data", "message"),
    [
        (RsyncArgs, {"src": "s", "dest": "/d", "keep": 0}, "'keep' must be at least 1 (got 0)"),
        (CommandArgs, {"argv": ["a"], "shell": "b"}, "give exactly one of 'argv' and 'shell'"),
        (CommandArgs, {}, "give exactly one of 'argv' and 'shell'"),
        (CommandArgs, {"argv": []}, "'argv' must not be empty"),
        (
            MigrateArgs,
            {"name": "a b", "up": "u", "down": "d"},
            "'name' must be letters, digits and _.- (got string 'a b')",
        ),
    ],
)
def test_conversion_and_the_module_enforce_the_same_rule(cls, data, message):
    with pytest.raises(ArgError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(cls, data, path="steps.s.args")
    instance = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    with pytest.raises(ArgError, match=message.replace("(", r"\(").replace(")", r"\)")):
        enforce(instance, path="steps.s.args")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture
def inventory(tmp_path):
    return _write(
        tmp_path,
        "inv.yml",
        """\
        defaults: {connection: local}
        vars: {keep_n: 0, migration: "add index"}
        hosts: {a: {}}
        groups: {web: {hosts: [a]}}
        """,
    )


def test_a_rendered_value_that_breaks_a_rule_is_a_validate_error_at_the_argument(tmp_path, inventory, capsys):
    pb = _write(
        tmp_path,
        "pb.yml",
        """\
        fleets:
          web: {hosts: web}
        steps:
          - id: sync
            module: rsync
            fleet: web
            args:
              src: /tmp
              dest: /srv/app
              releases: true
              keep: "{{ keep_n }}"
          - id: m
            module: migrate
            fleet: web
            args: {name: "{{ migration }}", up: "true", down: "true"}
        """,
    )
    assert main(["validate", str(pb), "-i", str(inventory)]) == 1
    err = capsys.readouterr().err
    assert f"{pb}:11:13 steps.sync.args.keep: 'keep' must be at least 1 (got 0)" in err
    assert f"{pb}:15:18 steps.m.args.name: 'name' must be letters, digits and _.- (got string 'add index')" in err


def test_a_literal_value_that_breaks_a_rule_is_a_load_error(tmp_path, capsys):
    pb = _write(
        tmp_path,
        "pb.yml",
        """\
        steps:
          - id: s
            module: command
            fleet: controller
            args: {argv: [a], shell: b}
          - id: sync
            module: rsync
            fleet: controller
            args: {src: /tmp, dest: /srv, keep: 0}
        """,
    )
    assert main(["validate", str(pb)]) == 1
    err = capsys.readouterr().err
    assert f"{pb}:5:11 steps[0].args: give exactly one of 'argv' and 'shell'" in err
    assert "steps[1].args.keep: 'keep' must be integer >= 1 or a template (got integer 0)" in err


def test_npm_version_ranges_and_canary_timeouts_are_refused_by_validate(tmp_path, inventory, capsys):
    pb = _write(
        tmp_path,
        "pb.yml",
        """\
        vars: {wanted: "^1.2.0"}
        sources:
          tpl: {type: npm, package: "@acme/tpl", version: "{{ wanted }}", registry: "http://127.0.0.1:1"}
        steps:
          - {id: s, module: command, fleet: controller, args: {argv: [echo, "{{ sources.tpl.path }}"]}}
        """,
    )
    assert main(["validate", str(pb), "-i", str(inventory)]) == 1
    err = capsys.readouterr().err
    assert f"{pb}:3:51 sources.tpl.version: 'version' must be an exact version or a dist-tag, not a range" in err
    assert schema_for(CanaryArgs, templated=False)["properties"]["timeout_seconds"]["minimum"] == 1
