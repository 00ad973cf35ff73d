"""`playbook inventory …` at the command line: patterns, show with var origins, graph, edits and
their exit codes (0 ok, 1 refused with `error: <reason>` and the file untouched)."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import pytest

from engine.cli.inventory import register, run
from engine.errors import PlaybookError

WEB = [f"web{i:02d}" for i in range(1, 11)]

# the 20-host inventory of tests/engine/model/test_patterns.py, as a file
INVENTORY = """\
# twenty hosts
defaults: {connection: local}
vars:
  app: shop          # everyone
  tier: base
hosts:
  web01: {vars: {tier: canary-host}}
  web02: {}
  web03: {}
  web04: {}
  web05: {}
  web06: {}
  web07: {address: 10.0.0.7}
  web08: {}
  web09: {}
  web10: {}
  db01: {connection: ssh, address: 10.0.1.1, port: 2222, user: postgres}
  db02: {}
  cache1: {}
  cache2: {}
  cache3: {}
  cache4: {}
  lb01: {}
  lb02: {}
  mon01: {}
  bastion: {}
groups:
  web:
    hosts: [web03, web04, web05, web06, web07, web08, web09, web10]
    children: [canary]
    vars: {role: web, tier: web}
  canary:
    hosts: [web01, web02]
    vars: {canary: true}
  db: {hosts: [db01, db02]}
  cache: {hosts: [cache1, cache2, cache3, cache4]}
  edge:
    hosts: [lb01, lb02]
    children: [web]
"""


def _main_has_inventory() -> bool:
    from engine import cli

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return "inventory" in sub.choices


def cli(*argv: str) -> int:
    """Run `playbook inventory …` the way the main CLI does (through it once it is wired)."""
    if _main_has_inventory():
        from engine.cli import main

        return main(["inventory", *argv])
    import sys

    parser = argparse.ArgumentParser(prog="playbook")
    register(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["inventory", *argv])
    try:
        return run(ns)
    except PlaybookError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1


@pytest.fixture
def inv(tmp_path) -> Path:
    p = tmp_path / "inventory.yml"
    p.write_text(INVENTORY)
    return p


def _listed(capsys) -> list[str]:
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["HOST", "ADDRESS", "GROUPS"]
    return [line.split()[0] for line in out[1:]]


@pytest.mark.parametrize(
    "pattern,expected",
    [
        ("all", WEB + ["db01", "db02", "cache1", "cache2", "cache3", "cache4", "lb01", "lb02", "mon01", "bastion"]),
        ("web", WEB),
        ("web:!canary", WEB[2:]),
        ("web:&canary", ["web01", "web02"]),
        ("web0[1-3]", ["web01", "web02", "web03"]),
        ("db,cache1", ["db01", "db02", "cache1"]),
        ("edge:!web", ["lb01", "lb02"]),
        ("cache*:!cache4", ["cache1", "cache2", "cache3"]),
        ("~^(mon|bas)", ["mon01", "bastion"]),
        ("all:!web:!edge:!db:!cache", ["mon01", "bastion"]),
    ],
)
def test_list_pattern(inv, capsys, pattern, expected):
    assert cli("-i", str(inv), "list", pattern) == 0
    assert _listed(capsys) == expected


def test_list_json_for_scripts(inv, capsys):
    assert cli("list", "db", "-i", str(inv), "--format", "json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [
        {"name": "db01", "address": "10.0.1.1", "port": 2222, "connection": "ssh", "groups": ["db"]},
        {"name": "db02", "address": "db02", "port": 22, "connection": "local", "groups": ["db"]},
    ]


def test_list_text_shows_address_and_groups(inv, capsys):
    assert cli("-i", str(inv), "list", "web01,db01") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["web01", "local", "canary"]
    assert out[2].split() == ["db01", "10.0.1.1:2222", "db"]


def test_list_unknown_pattern_term_is_an_error(inv, capsys):
    assert cli("-i", str(inv), "list", "wbe") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "matches no host or group" in err and "did you mean 'web'" in err


def test_inventory_from_environment(inv, capsys, monkeypatch):
    monkeypatch.setenv("PLAYBOOK_INVENTORY", str(inv))
    assert cli("list", "db") == 0
    assert _listed(capsys) == ["db01", "db02"]


def test_missing_inventory_is_an_error(capsys, monkeypatch):
    monkeypatch.delenv("PLAYBOOK_INVENTORY", raising=False)
    assert cli("list") == 1
    assert "pass -i FILE or set $PLAYBOOK_INVENTORY" in capsys.readouterr().err


def test_show_gives_each_var_and_its_origin(inv, capsys):
    assert cli("-i", str(inv), "show", "web01", "--format", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["vars"] == {
        "app": {"value": "shop", "from": "group all"},
        "tier": {"value": "canary-host", "from": "host web01"},
        "role": {"value": "web", "from": "group web"},
        "canary": {"value": True, "from": "group canary"},
    }
    assert doc["groups"] == ["edge", "web", "canary"]
    assert doc["direct_groups"] == ["canary"]
    assert doc["connection"]["connection"] == "local"


def test_show_text(inv, capsys):
    assert cli("-i", str(inv), "show", "db01") == 0
    out = capsys.readouterr().out
    assert "address: 10.0.1.1" in out and "port: 2222" in out and "user: postgres" in out
    assert any(line.split()[:2] == ["tier:", '"base"'] and line.endswith("# group all") for line in out.splitlines())


def test_show_unknown_host(inv, capsys):
    assert cli("-i", str(inv), "show", "web1") == 1
    assert "unknown host 'web1'" in capsys.readouterr().err


def test_graph(inv, capsys):
    assert cli("-i", str(inv), "graph") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "@all:"
    assert "  |--@edge:" in out and "  |  |--@web:" in out and "  |  |  |--@canary:" in out
    assert "  |  |  |  |--web01" in out
    assert out[-3:] == ["  |--@ungrouped:", "  |  |--mon01", "  |  |--bastion"]


def test_graph_json(inv, capsys):
    assert cli("-i", str(inv), "graph", "--format", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["all"]["children"] == ["db", "cache", "edge", "ungrouped"]
    assert doc["web"]["children"] == ["canary"]


def test_validate(inv, capsys, tmp_path):
    assert cli("-i", str(inv), "validate") == 0
    assert "20 hosts, 5 groups" in capsys.readouterr().out
    bad = tmp_path / "bad.yml"
    bad.write_text("hosts:\n  a: {adress: x}\n")
    assert cli("-i", str(bad), "validate") == 1
    assert "unknown key 'adress' (did you mean 'address'?)" in capsys.readouterr().err


# --- edits through the CLI -----------------------------------------------------------------------


def _diff_lines(before: str, after: str) -> list[str]:
    import difflib

    return [
        ln.rstrip("\n")
        for ln in difflib.unified_diff(before.splitlines(True), after.splitlines(True), n=0)
        if ln[:1] in "+-" and not ln.startswith(("+++", "---"))
    ]


def test_add_host_cli(inv, capsys):
    before = inv.read_text()
    code = cli(
        "add-host",
        "web11",
        "-i",
        str(inv),
        "--group",
        "web",
        "--var",
        "port=8080",
        "--var",
        "name=x",
        "--address",
        "10.0.0.11",
        "--port",
        "2200",
    )
    assert code == 0, capsys.readouterr().err
    assert _diff_lines(before, inv.read_text()) == [
        "+  web11: {address: 10.0.0.11, port: 2200, vars: {port: 8080, name: x}}",
        "-    hosts: [web03, web04, web05, web06, web07, web08, web09, web10]",
        "+    hosts: [web03, web04, web05, web06, web07, web08, web09, web10, web11]",
    ]
    capsys.readouterr()
    assert cli("-i", str(inv), "list", "web:!canary", "--format", "json") == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == WEB[2:] + ["web11"]


def test_set_var_unset_var_cli(inv, capsys):
    before = inv.read_text()
    assert cli("-i", str(inv), "set-var", "--group", "db", "backup=true", "retention=7") == 0
    assert _diff_lines(before, inv.read_text()) == [
        "-  db: {hosts: [db01, db02]}",
        "+  db: {hosts: [db01, db02], vars: {backup: true, retention: 7}}",
    ]
    assert cli("-i", str(inv), "unset-var", "--group", "db", "backup", "retention") == 0
    assert inv.read_text() == before
    assert cli("-i", str(inv), "set-var", "--all", "app=shop2") == 0
    assert _diff_lines(before, inv.read_text()) == [
        "-  app: shop          # everyone",
        "+  app: shop2         # everyone",
    ]


def test_remove_host_and_add_group_cli(inv, capsys):
    before = inv.read_text()
    assert cli("-i", str(inv), "remove-host", "mon01") == 0
    assert _diff_lines(before, inv.read_text()) == ["-  mon01: {}"]
    mid = inv.read_text()
    assert cli("-i", str(inv), "add-group", "ops", "--host", "bastion", "--parent", "edge") == 0
    assert _diff_lines(mid, inv.read_text()) == [
        "-    children: [web]",
        "+    children: [web, ops]",
        "+  ops:",
        "+    hosts: [bastion]",
    ]  # most groups are block


@pytest.mark.parametrize(
    "argv,message",
    [
        (["add-host", "web01"], "host 'web01' already exists"),
        (["add-host", "web11", "--group", "wbe"], "unknown group 'wbe' (did you mean 'web'?)"),
        (["add-host", "web11", "--var", "bad-name=1"], "'bad-name' is not a valid var name"),
        (["set-var", "--host", "web01", "flag=yes"], "ambiguous value 'yes'"),
        (["set-var", "--host", "web01", "v=1.10"], "ambiguous number '1.10'"),
        (["set-var", "--group", "nope", "a=1"], "unknown group 'nope'"),
        (["unset-var", "--all", "nope"], "all has no var 'nope'"),
        (["add-group", "loop", "--child", "edge", "--parent", "canary"], "cycle"),
    ],
)
def test_refused_edit_cli(inv, capsys, argv, message):
    before = inv.read_bytes()
    assert cli("-i", str(inv), *argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert inv.read_bytes() == before


def test_dry_run_prints_diff_and_changes_nothing(inv, capsys):
    before = inv.read_bytes()
    assert cli("-i", str(inv), "add-host", "web11", "--group", "canary", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "+  web11: {}" in out and "-    hosts: [web01, web02]" in out
    assert inv.read_bytes() == before


def test_set_var_quoted_string(inv, capsys):
    assert cli("-i", str(inv), "set-var", "--host", "web02", 'flag="yes"', "mode='0755'") == 0
    from engine.load.inventory import load_inventory

    assert dict(load_inventory(str(inv)).hosts["web02"].vars) == {"flag": "yes", "mode": "0755"}


def test_missing_subcommand(inv, capsys):
    assert cli("-i", str(inv)) == 1
    assert "missing subcommand" in capsys.readouterr().err


def test_no_dynamic_flag_reads_file_only(tmp_path, capsys):
    p = tmp_path / "inv.yml"
    p.write_text(
        textwrap.dedent("""\
        hosts:
          a: {}
        groups:
          web: {hosts: [a], children: [role_web]}
        dynamic:
          - aws_ec2: {regions: [eu-west-1], group_by_tags: [role], endpoint_url: "http://127.0.0.1:9"}
        """)
    )
    assert cli("-i", str(p), "list", "web", "--no-dynamic") == 0
    assert _listed(capsys) == ["a"]
    assert cli("-i", str(p), "validate", "--no-dynamic") == 0
