"""The CLI on bad input: one located, clear error per broken file, exit 1, never a traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.cli import main
from tests.engine.load.test_loader import fake_modules  # noqa: F401  (the samples use its test doubles)

DATA = Path(__file__).parents[1] / "load" / "data"
BROKEN = sorted((DATA / "broken").glob("*.yml"))


def _expected(path: Path) -> tuple[str, list[str]]:
    """The first line of each sample says `# error: LINE:COL PATH :: word; word`."""
    head = path.read_text().splitlines()[0] if path.read_text() else ""
    m = re.match(r"# error: (\d+:\d+)?\s*(\S*)\s*::\s*(.*)", head)
    if not m:
        return "", []
    return m.group(1) or "", [w.strip() for w in m.group(3).split(";") if w.strip()]


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_validate_broken_playbook(path, capsys, fake_modules):  # noqa: F811 (the fixture)
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in out + err
    where, words = _expected(path)
    if where:
        assert f"{path}:{where}" in err, err
    for word in words:
        assert word in err, (word, err)


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def touch_playbook(tmp_path: Path, target: Path) -> Path:
    """One `command` step on fleet `web` that creates `<target>-<host>` unless it exists."""
    return write(
        tmp_path,
        "pb.yml",
        f"""\
        fleets:
          web: {{hosts: web}}
        steps:
          - id: make
            module: command
            fleet: web
            args: {{argv: [touch, "{target}-{{{{ host.name }}}}"], creates: "{target}-{{{{ host.name }}}}"}}
        """,
    )


@pytest.fixture
def inventory(tmp_path):
    return write(
        tmp_path,
        "inv.yml",
        """\
        defaults: {connection: local}
        vars: {deploy_root: /tmp/x}
        hosts:
          a: {}
          b: {vars: {only_b: 1}}
        groups:
          web: {hosts: [a, b]}
        """,
    )


def test_undefined_variable_is_located_and_named(tmp_path, inventory, capsys):
    pb = write(
        tmp_path,
        "pb.yml",
        """\
        fleets:
          web: {hosts: web}
        steps:
          - id: deploy
            module: command
            fleet: web
            args:
              argv: [ls, "{{ deploy_rot }}"]
        """,
    )
    code = main(["validate", str(pb), "-i", str(inventory)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{pb}:8:" in err
    assert "undefined variable 'deploy_rot'" in err and "did you mean 'deploy_root'" in err
    assert "steps.deploy.args.argv[1]" in err


def test_variable_defined_on_some_hosts_only_names_the_host(tmp_path, inventory, capsys):
    pb = write(
        tmp_path,
        "pb.yml",
        """\
        fleets:
          web: {hosts: web}
        steps:
          - id: s
            module: command
            fleet: web
            args: {argv: [echo, "{{ only_b }}"]}
        """,
    )
    assert main(["validate", str(pb), "-i", str(inventory)]) == 1
    err = capsys.readouterr().err
    assert "undefined variable 'only_b' for host a" in err
    assert "for host b" not in err


def test_plan_refuses_bad_input_before_touching_hosts(tmp_path, inventory, capsys):
    marker = tmp_path / "touched"
    pb = write(
        tmp_path,
        "pb.yml",
        f"""\
        fleets:
          web: {{hosts: web}}
        steps:
          - id: first
            module: command
            fleet: web
            args: {{argv: [touch, "{marker}"]}}
          - id: second
            module: command
            fleet: web
            args: {{argv: [echo, "{{{{ nope }}}}"]}}
        """,
    )
    assert main(["run", str(pb), "-i", str(inventory)]) == 1
    assert "undefined variable 'nope'" in capsys.readouterr().err
    assert not marker.exists()


def test_limit_typo_is_an_error(tmp_path, inventory, capsys):
    pb = write(
        tmp_path,
        "pb.yml",
        """\
        fleets:
          web: {hosts: web}
        steps:
          - {id: s, module: command, fleet: web, args: {argv: ["true"]}}
        """,
    )
    assert main(["plan", str(pb), "-i", str(inventory), "--limit", "webb"]) == 1
    assert "did you mean 'web'" in capsys.readouterr().err


def test_plan_json_and_exit_codes(tmp_path, inventory, capsys):
    target = tmp_path / "made"
    pb = touch_playbook(tmp_path, target)
    assert main(["plan", str(pb), "-i", str(inventory), "--format", "json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert {(r["host"], r["status"]) for r in doc["results"]} == {("a", "changed"), ("b", "changed")}
    assert not Path(f"{target}-a").exists()
    assert main(["run", str(pb), "-i", str(inventory), "--format", "json", "--state-dir", str(tmp_path / "st")]) == 0
    capsys.readouterr()
    assert Path(f"{target}-a").exists() and Path(f"{target}-b").exists()
    assert main(["plan", str(pb), "-i", str(inventory), "--format", "json"]) == 0


def test_graph_and_modules(capsys, tmp_path):
    pb = write(
        tmp_path,
        "pb.yml",
        """\
        sources:
          site: {type: local, path: .}
        fleets:
          web: {hosts: web}
        steps:
          - {id: s, module: command, fleet: web, args: {argv: [ls, "{{ sources.site.path }}"]}}
        """,
    )
    assert main(["graph", str(pb)]) == 0
    assert "s_sources_site --> s_s" in capsys.readouterr().out
    assert main(["modules"]) == 0
    assert "command" in capsys.readouterr().out
    assert main(["modules", "comand"]) == 1
    assert "did you mean 'command'" in capsys.readouterr().err


def test_no_traceback_from_the_real_process(tmp_path):
    pb = write(tmp_path, "pb.yml", "steps: [\n")
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "validate", str(pb)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"{pb}:" in proc.stderr


def test_source_type_index_matches_the_modules():
    import modules
    from engine.module import all_modules

    declared = {getattr(m, "source_type", None): name for name, m in all_modules().items()}
    declared.pop(None, None)
    assert declared == modules.SOURCE_TYPES


def test_every_module_file_registers_the_module_of_its_name():
    import pkgutil

    import modules
    from engine.module import all_modules

    files = {i.name for i in pkgutil.iter_modules(modules.__path__) if not i.name.startswith("_")}
    assert files == set(all_modules())


def test_the_command_ends_fast_yet_loses_nothing(tmp_path, inventory):
    """`playbook` ends with os._exit after main (engine.cli.entry): exit codes, every byte of
    piped output, saved plans, history and atexit handlers all survive it."""
    target = tmp_path / "made"
    pb = touch_playbook(tmp_path, target)
    state = tmp_path / "st"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "engine.cli", *args, "-i", str(inventory), "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    plan = cli("plan", str(pb), "--format", "json", "--out", str(tmp_path / "plan.json"))
    assert plan.returncode == 2, plan.stderr
    assert {(r["host"], r["status"]) for r in json.loads(plan.stdout)["results"]} == {
        ("a", "changed"),
        ("b", "changed"),
    }
    assert json.loads((tmp_path / "plan.json").read_text())["nodes"]
    run = cli("run", str(pb), "--format", "jsonl")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1])["event"] == "run_finished"  # the last line arrived whole
    hist = subprocess.run(
        [sys.executable, "-m", "engine.cli", "history", "--state-dir", str(state), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert hist.returncode == 0 and len(json.loads(hist.stdout)) == 1, hist.stdout + hist.stderr
    hook = write(
        tmp_path,
        "hook.py",
        f"""\
        import atexit, sys
        from engine import cli
        atexit.register(lambda: open({str(tmp_path / "atexit-ran")!r}, "w").close())
        sys.argv = ["playbook", "validate", {str(pb)!r}, "-i", {str(inventory)!r}]
        cli.entry()
        """,
    )
    done = subprocess.run(
        [sys.executable, str(hook)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "atexit-ran").exists()


def test_every_help_example_parses():
    """The examples `--help` shows are real command lines (shell pipes and comments aside)."""
    import shlex

    from engine.cli.main import EXAMPLES, build_parser

    parser = build_parser()
    for command, lines in EXAMPLES.items():
        for line in lines:
            words = shlex.split(line.split("#", 1)[0].split("|", 1)[0].split(">", 1)[0])
            words = [w for w in words if "=" not in w or w.startswith("-") or not w.isupper()]
            assert words[0] == "playbook", line
            if words[1:] == ["COMMAND", "--help"]:
                continue
            ns = parser.parse_args(words[1:])
            assert ns.command == (command or ns.command), line
        if command:
            assert "examples:" in parser._subparsers._group_actions[0].choices[command].format_help()


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("playbook ")
