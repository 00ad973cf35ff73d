"""Bounded loading: alias bombs, oversized files and non-regular files are refused at once.

The CLI runs in a subprocess under an address-space limit (`prlimit --as`), so a loader that
expands a bomb dies of MemoryError instead of passing; the harness timeout only catches hangs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.errors import LoadError
from engine.yamlio.roundtrip import detect_indent
from engine.yamlio.scalars import YamlEditError, find_key_path

ADDRESS_SPACE = 256 * 1024 * 1024  # a normal `playbook run` fits in well under half of this
ROOT = Path(__file__).parents[3]


def bomb(indent: str = "") -> str:
    """A 'billion laughs': nine levels of nine aliases, 9^9 values in about 500 bytes."""
    lines = [f'{indent}a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{indent}{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


PLAYBOOK = """\
name: ok
inventory: inv.yml
steps:
  - id: hi
    module: command
    fleet: controller
    args:
      argv: ["true"]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "inv.yml").write_text("hosts:\n  a: {connection: local}\n")
    (tmp_path / "ok.yml").write_text(PLAYBOOK)
    return tmp_path


def cli(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit (util-linux) is not installed")
    return subprocess.run(
        [prlimit, f"--as={ADDRESS_SPACE}", sys.executable, "-m", "engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,  # a hang fails loudly; the bound asserted is memory, not time
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **(env or {})},
    )


def refused(proc: subprocess.CompletedProcess, where: str, what: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert where in proc.stderr and what in proc.stderr, proc.stderr


def test_a_normal_run_fits_the_address_space_limit(project: Path):
    proc = cli(project, "run", "ok.yml", "--state-dir", str(project / "state"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_a_bomb_under_an_ignored_x_key_is_refused_at_its_alias(project: Path, command: str):
    (project / "pb.yml").write_text(PLAYBOOK + "x-bomb:\n" + bomb("  "))
    state = [] if command == "validate" else ["--state-dir", str(project / "state")]
    proc = cli(project, command, "pb.yml", *state)
    refused(proc, "pb.yml:15:", "aliases expand to more than 100000 values")


def test_a_bomb_of_merge_keys_is_refused(project: Path):
    lines = ["x-a: &a {k1: v, k2: v, k3: v, k4: v, k5: v, k6: v, k7: v, k8: v, k9: v}"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"x-{name}: &{name} [" + ",".join([f"{{<<: *{prev}}}"] * 9) + "]")
    (project / "pb.yml").write_text(PLAYBOOK + "\n".join(lines) + "\n")
    refused(cli(project, "validate", "pb.yml"), "pb.yml:", "aliases expand to more than")


def test_a_bomb_in_the_inventory_is_refused(project: Path):
    (project / "inv.yml").write_text("hosts:\n  a: {connection: local}\nvars:\n" + bomb("  "))
    refused(cli(project, "plan", "ok.yml"), "inv.yml:", "aliases expand to more than")


def test_a_bomb_in_an_extra_vars_file_is_refused(project: Path):
    (project / "vars.yml").write_text(bomb())
    refused(cli(project, "validate", "ok.yml", "-e", "@vars.yml"), "vars.yml:", "aliases expand to more than")


def test_inventory_edits_refuse_a_bomb(project: Path):
    (project / "inv.yml").write_text("hosts:\n  a: {connection: local}\nvars:\n" + bomb("  "))
    proc = cli(project, "inventory", "-i", "inv.yml", "add-host", "b")
    refused(proc, "inv.yml:", "aliases expand to more than")


@pytest.mark.parametrize("where", ["playbook", "inventory", "extra vars"])
@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_non_regular_files_are_refused_at_once(project: Path, where: str, special: str):
    path = special
    if special == "fifo":
        os.mkfifo(project / "fifo")  # nothing ever writes it: reading would block forever
        path = str(project / "fifo")
    args = {
        "playbook": ["validate", path],
        "inventory": ["validate", "ok.yml", "-i", path],
        "extra vars": ["validate", "ok.yml", "-e", f"@{path}"],
    }[where]
    refused(cli(project, *args), path, "not a regular file")


def test_an_oversized_file_is_refused_and_the_limit_is_configurable(project: Path):
    big = PLAYBOOK + "x-pad: |\n" + ("  " + "x" * 78 + "\n") * 60_000  # ~4.8 MB, over the default
    (project / "big.yml").write_text(big)
    refused(cli(project, "validate", "big.yml"), "big.yml", "file is too big")
    proc = cli(project, "validate", "big.yml", env={"PLAYBOOK_MAX_FILE_SIZE": "8M"})
    assert proc.returncode == 0, proc.stderr
    refused(
        cli(project, "validate", "ok.yml", env={"PLAYBOOK_MAX_FILE_SIZE": "100"}), "ok.yml", "PLAYBOOK_MAX_FILE_SIZE"
    )


def test_a_bad_limit_setting_is_an_error(project: Path):
    proc = cli(project, "validate", "ok.yml", env={"PLAYBOOK_MAX_FILE_SIZE": "lots"})
    refused(proc, "PLAYBOOK_MAX_FILE_SIZE", "positive number of bytes")


def test_round_trip_readers_refuse_a_bomb_before_building_it():
    text = "image:\n  tag: v1\n" + bomb()
    with pytest.raises(YamlEditError, match=r"values.yaml:\d+:\d+ aliases expand to more than"):
        find_key_path(text, "image.tag", name="values.yaml")
    assert detect_indent(text) == (2, 4, 2)  # the bomb is not walked: the defaults


def test_load_errors_name_the_file_and_position():
    from engine.yamlio.document import load_text

    with pytest.raises(LoadError) as err:
        load_text(textwrap.dedent(bomb()), "b.yml")
    assert str(err.value).startswith("b.yml:")


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize(
    "text,where",
    [
        # the top-level mapping and the one under `vars` are 2 levels: 199 lists is one too many
        (PLAYBOOK + f"vars:\n  x: {nested(199)}\n", "pb.yml:10:"),
        # through an alias: 2 mappings, 99 lists and the 100 lists `*a` stands for
        (PLAYBOOK + f"x-a: &a {nested(100)}\nvars:\n  x: {'[' * 99}*a{']' * 99}\n", "pb.yml:11:"),
    ],
)
def test_yaml_nested_over_200_levels_is_refused_where_it_crosses(project: Path, text: str, where: str):
    # PyYAML builds nested values recursively: at ~490 levels this said "YAML is nested too deeply"
    # with no line, and a value nested ~980 levels deep passed -e and then failed on the host
    (project / "pb.yml").write_text(text)
    refused(cli(project, "validate", "pb.yml"), where, "nested more than 200 levels")


def test_yaml_nested_200_levels_is_read(project: Path):
    (project / "pb.yml").write_text(PLAYBOOK + f"x-a: &a {nested(99)}\nvars:\n  x: {nested(198)}\n  y: [[[*a]]]\n")
    proc = cli(project, "validate", "pb.yml")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("depth", [200, 980, 20000])
def test_extra_vars_json_nested_over_200_levels_is_refused(project: Path, depth: int):
    proc = cli(project, "validate", "ok.yml", "-e", '{"x": ' + nested(depth) + "}")
    refused(proc, "-e JSON", "nested more than 200 levels")
    assert cli(project, "validate", "ok.yml", "-e", '{"x": ' + nested(199) + "}").returncode == 0
