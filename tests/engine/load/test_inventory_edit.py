"""Inventory edits change only the intended lines, and invalid edits leave the file untouched."""

from __future__ import annotations

import difflib
import os
import stat
import textwrap
from pathlib import Path

import pytest

from engine.errors import PlaybookError
from engine.load.inventory import load_inventory
from engine.load.inventory_edit import (
    InventoryEditError,
    Target,
    add_group,
    add_host,
    parse_assignment,
    parse_value,
    remove_host,
    set_vars,
    unset_vars,
)
from engine.yamlio.roundtrip import merge_edit

# comments above, inline comments, flow mappings, quoted strings, blank lines, aligned values,
# text before `---`, an indentless block list and a 2-space indented one
COMMENTED = """\
# Production fleet: edit with `playbook inventory`
---
defaults:                        # connection settings for every host
  user: deploy
  key:    keys/id_ed25519        # aligned by hand

vars: {app: shop, 'region': "eu-west-1"}   # flow vars

# ---- hosts ----
hosts:
  web01:
    address: "10.0.0.11"         # double-quoted
  web02: {address: 10.0.0.12, port: 2222}
  # the database box
  db1: {}

  builder:
    connection: local
    vars:
      build_dir: '/srv/build'    # single-quoted

# ---- groups ----
groups:
  web:
    hosts: [web01, web02, web03]   # web03 is only listed here
    children: [canary]
    vars:
      role: web
  canary:
    hosts:
      - web03
      # a comment inside the list
      - web04
  db:
    hosts: [db1]
# end of file
"""


def _write(tmp_path: Path, text: str, name: str = "inventory.yml") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode())
    return p


def _changes(before: str, after: str) -> list[str]:
    """The diff as '-line' / '+line' entries, context dropped."""
    return [
        line.rstrip("\n")
        for line in difflib.unified_diff(before.splitlines(True), after.splitlines(True), n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


@pytest.fixture
def inv(tmp_path):
    return _write(tmp_path, COMMENTED)


# --- each edit command: only the intended lines change ----------------------------------------

EDITS = {
    "add-host with address and groups": (
        lambda p: add_host(p, "web07", groups=["web", "canary"], address="10.0.0.17"),
        [
            "+  web07:",
            "+    address: 10.0.0.17",
            "-    hosts: [web01, web02, web03]   # web03 is only listed here",
            "+    hosts: [web01, web02, web03, web07] # web03 is only listed here",
            "+      - web07",
        ],
    ),
    "add-host bare": (
        lambda p: add_host(p, "web08", groups=["db"]),
        ["+  web08: {}", "-    hosts: [db1]", "+    hosts: [db1, web08]"],
    ),
    "add-host with vars and port": (
        lambda p: add_host(p, "web09", port=2200, vars={"weight": 3, "tag": "yes"}),
        ["+  web09:", "+    port: 2200", "+    vars:", "+      weight: 3", '+      tag: "yes"'],
    ),
    "remove-host with its comment": (
        lambda p: remove_host(p, "db1"),
        ["-  # the database box", "-  db1: {}", "-    hosts: [db1]", "+    hosts: []"],
    ),
    "remove-host from a block list keeps the list's comment": (
        lambda p: remove_host(p, "web03"),
        [
            "-    hosts: [web01, web02, web03]   # web03 is only listed here",
            "+    hosts: [web01, web02]          # web03 is only listed here",
            "-      - web03",
        ],
    ),
    "remove-host last in its block keeps the next section's comment": (
        lambda p: remove_host(p, "builder"),
        [
            "-  builder:",
            "-    connection: local",
            "-    vars:",
            "-      build_dir: '/srv/build'    # single-quoted",
            "-",
        ],
    ),
    "set-var new on a block host": (
        lambda p: set_vars(p, Target("host", "web01"), {"weight": 2}),
        ["+    vars:", "+      weight: 2"],
    ),
    "set-var on a flow host": (
        lambda p: set_vars(p, Target("host", "web02"), {"weight": 2}),
        ["-  web02: {address: 10.0.0.12, port: 2222}", "+  web02: {address: 10.0.0.12, port: 2222, vars: {weight: 2}}"],
    ),
    "set-var appends to block vars at the end of a section": (
        lambda p: set_vars(p, Target("host", "builder"), {"cache": "/var/cache"}),
        ["+      cache: /var/cache"],
    ),
    "set-var replaces a quoted value keeping its quotes and comment": (
        lambda p: set_vars(p, Target("host", "builder"), {"build_dir": "/srv/b2"}),
        ["-      build_dir: '/srv/build'    # single-quoted", "+      build_dir: '/srv/b2'       # single-quoted"],
    ),
    "set-var on a group": (
        lambda p: set_vars(p, Target("group", "db"), {"backup": True}),
        ["+    vars:", "+      backup: true"],
    ),
    "set-var on all (flow)": (
        lambda p: set_vars(p, Target("all"), {"app": "shop2", "version": "1.10"}),
        [
            "-vars: {app: shop, 'region': \"eu-west-1\"}   # flow vars",
            '+vars: {app: shop2, \'region\': "eu-west-1", version: "1.10"} # flow vars',
        ],
    ),
    "set-var on a host only named in a group": (
        lambda p: set_vars(p, Target("host", "web04"), {"weight": 1}),
        ["+  web04:", "+    vars:", "+      weight: 1"],
    ),
    "unset-var removes an emptied vars:": (
        lambda p: unset_vars(p, Target("group", "web"), ["role"]),
        ["-    vars:", "-      role: web"],
    ),
    "add-group with child and parent": (
        lambda p: add_group(p, "lb", children=["canary"], parents=["db"]),
        ["+    children: [lb]", "+  lb:", "+    children: [canary]"],
    ),
    "add-group empty": (
        lambda p: add_group(p, "cache"),
        ["+  cache: {}"],
    ),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_edit_changes_only_intended_lines(inv, name):
    edit, expected = EDITS[name]
    before = inv.read_text()
    result = edit(str(inv))
    after = inv.read_text()
    assert result.changed and not result.reformatted
    assert _changes(before, after) == expected, "".join(
        difflib.unified_diff(before.splitlines(True), after.splitlines(True))
    )
    load_inventory(str(inv))  # and the file is still valid


def test_added_host_is_loaded_where_intended(inv):
    add_host(str(inv), "web07", groups=["canary"], address="10.0.0.17", port=2201, vars={"weight": 3})
    loaded = load_inventory(str(inv))
    h = loaded.hosts["web07"]
    assert (h.address, h.port, h.user, dict(h.vars)) == ("10.0.0.17", 2201, "deploy", {"weight": 3})
    assert loaded.groups["canary"].hosts == ("web03", "web04", "web07")


def test_edit_keeps_four_space_indentation_and_indented_lists(tmp_path):
    text = textwrap.dedent("""\
        hosts:
            a:
                address: 10.0.0.1
        groups:
            web:
                hosts:
                  - a
        """)
    p = _write(tmp_path, text)
    add_host(str(p), "b", groups=["web"], address="10.0.0.2")
    assert _changes(text, p.read_text()) == ["+    b:", "+        address: 10.0.0.2", "+          - b"]


def test_edit_keeps_indentless_lists(tmp_path):
    text = "hosts:\n  a: {}\ngroups:\n  web:\n    hosts:\n    - a\n"
    p = _write(tmp_path, text)
    add_host(str(p), "b", groups=["web"])
    assert _changes(text, p.read_text()) == ["+  b: {}", "+    - b"]


def test_edit_keeps_crlf_and_missing_final_newline(tmp_path):
    text = "hosts:\r\n  a: {}   # first\r\ngroups:\r\n  web: {hosts: [a]}"
    p = _write(tmp_path, text)
    add_host(str(p), "b", groups=["web"])
    after = p.read_bytes().decode()
    assert after == "hosts:\r\n  a: {}   # first\r\n  b: {}\r\ngroups:\r\n  web: {hosts: [a, b]}"


def test_edit_creates_missing_sections_in_order(tmp_path):
    text = "# only groups\ngroups:\n  web: {}\n"
    p = _write(tmp_path, text)
    add_host(str(p), "a", groups=["web"], address="10.0.0.1")
    set_vars(str(p), Target("all"), {"app": "shop"})
    loaded = load_inventory(str(p))
    assert list(loaded.hosts) == ["a"] and loaded.vars == {"app": "shop"}
    assert loaded.groups["web"].hosts == ("a",)
    lines = p.read_text().splitlines()
    assert lines[0] == "# only groups"
    assert lines.index("vars:") < lines.index("hosts:") < lines.index("groups:")


def test_edit_keeps_mode_and_symlink(tmp_path, inv):
    os.chmod(inv, 0o640)
    link = tmp_path / "link.yml"
    link.symlink_to(inv.name)
    add_host(str(link), "web07")
    assert link.is_symlink()
    assert stat.S_IMODE(os.stat(inv).st_mode) == 0o640
    assert "web07" in load_inventory(str(inv)).hosts
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_dry_run_changes_nothing(inv):
    before = inv.read_bytes()
    result = add_host(str(inv), "web07", groups=["web"], dry_run=True)
    assert result.changed and "+  web07: {}" in result.diff
    assert inv.read_bytes() == before


# --- invalid edits are refused and the file is byte-identical --------------------------------

REFUSED = {
    "duplicate host": (lambda p: add_host(p, "web01"), "host 'web01' already exists"),
    "duplicate host only named in a group": (lambda p: add_host(p, "web03"), "host 'web03' already exists"),
    "unknown group": (lambda p: add_host(p, "web07", groups=["wbe"]), "unknown group 'wbe' (did you mean 'web'?)"),
    "bad var name": (
        lambda p: set_vars(p, Target("host", "web01"), {"bad-name": 1}),
        "'bad-name' is not a valid var name",
    ),
    "bad var name on add-host": (lambda p: add_host(p, "web07", vars={"1x": 1}), "'1x' is not a valid var name"),
    "bad host name": (lambda p: add_host(p, "web 07"), "'web 07' is not a valid host name"),
    "bad port": (lambda p: add_host(p, "web07", port=70000), "'port' must be integer from 1 to 65535"),
    "unknown host": (lambda p: remove_host(p, "web99"), "unknown host 'web99'"),
    "unknown var": (
        lambda p: unset_vars(p, Target("group", "web"), ["rol"]),
        "group 'web' has no var 'rol' (did you mean 'role'?)",
    ),
    "duplicate group": (lambda p: add_group(p, "web"), "group 'web' already exists"),
    "unknown child": (lambda p: add_group(p, "lb", children=["nope"]), "unknown group 'nope'"),
    "group cycle (caught by the loader)": (
        lambda p: add_group(p, "edge", children=["web"], parents=["canary"]),
        "groups contain each other in a cycle: web -> canary -> edge -> web",
    ),
    "all is implicit": (lambda p: add_group(p, "all"), "'all' is implicit"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_invalid_edit_is_refused_and_file_unchanged(inv, name):
    edit, message = REFUSED[name]
    before = inv.read_bytes()
    with pytest.raises(PlaybookError) as info:
        edit(str(inv))
    assert message in str(info.value)
    assert inv.read_bytes() == before
    assert not [f for f in os.listdir(inv.parent) if f.endswith(".tmp")]


def test_loader_refusal_names_the_real_file(inv):
    with pytest.raises(InventoryEditError) as info:
        add_group(str(inv), "edge", children=["web"], parents=["canary"])
    assert str(inv) in str(info.value) and ".tmp" not in str(info.value)


def test_broken_inventory_is_not_edited(tmp_path):
    p = _write(tmp_path, "hosts:\n  a: {}\n  a: {}\n")
    with pytest.raises(PlaybookError, match="duplicate key 'a'"):
        add_host(str(p), "b")


# --- values from the command line ------------------------------------------------------------


@pytest.mark.parametrize(
    "text,value",
    [
        ("8080", 8080),
        ("true", True),
        ("", None),
        ("web", "web"),
        ("1.5", 1.5),
        ('"yes"', "yes"),
        ("'0755'", "0755"),
        ("[80, 443]", [80, 443]),
        ("{a: 1}", {"a": 1}),
        ("0o755", 0o755),
        ("a b: c", "a b: c"),
    ],
)
def test_parse_value(text, value):
    assert parse_value(text) == value


@pytest.mark.parametrize("text", ["yes", "no", "on", "0755", "1.10"])
def test_parse_value_refuses_ambiguous(text):
    with pytest.raises(PlaybookError, match="ambiguous"):
        parse_value(text)


def test_parse_assignment():
    assert parse_assignment("port=8080") == ("port", 8080)
    with pytest.raises(PlaybookError, match="expected key=value"):
        parse_assignment("port")
    with pytest.raises(PlaybookError, match="not a valid var name"):
        parse_assignment("my-port=1")


def test_strings_the_strict_loader_would_misread_are_quoted(inv):
    set_vars(str(inv), Target("group", "db"), {"a": "yes", "b": "0755", "c": "1.10", "d": "true", "e": "plain"})
    assert load_inventory(str(inv)).groups["db"].vars == {
        "a": "yes",
        "b": "0755",
        "c": "1.10",
        "d": "true",
        "e": "plain",
    }


def test_merge_edit_falls_back_to_none_when_unplaceable():
    assert merge_edit("a: 1\n", "a: 1\n", "a: 2\n") == "a: 2\n"
