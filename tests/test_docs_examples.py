"""Every example in README.md and docs/ is checked by the real code, so a user can copy it.

- a ```yaml block is loaded by the real loader: a whole playbook or inventory as it is; a
  fragment (a `sources:`, `fleets:`, `secrets:`, `notify:` or `vars:` mapping, a list of steps,
  one step's `args:`) inside the smallest playbook that can hold it; a GitLab CI file has each
  `playbook` command of its scripts parsed;
- every `playbook …` command in a ```sh / ```console block (and in the `$ ` lines of sessions)
  is parsed by the real command-line parser;
- a block preceded by `<!-- example: not checked (why) -->` is skipped, and must say why.

Examples that need real hosts are run elsewhere (tests/integration/*); this test makes sure no
documented command or key is one the code does not know.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

import pytest
import yaml

from engine.cli.main import build_parser
from engine.load.inventory import load_inventory
from engine.load.playbook import load_playbook

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"(<!-- example: not checked \((?P<why>[^)]+)\) -->\s*)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


def blocks():
    for doc in DOCS:
        text = doc.read_text()
        for m in _BLOCK.finditer(text):
            line = text.count("\n", 0, m.start("body")) + 1
            yield pytest.param(
                doc,
                line,
                m.group("lang"),
                textwrap.dedent(m.group("body")),
                m.group("why"),
                id=f"{doc.relative_to(ROOT)}:{line}",
            )


def _commands(body: str) -> list[str]:
    """`playbook …` command lines of a shell block or session (continuations joined)."""
    out = []
    joined = body.replace("\\\n", " ")
    for raw in joined.splitlines():
        line = raw.strip()
        if line.startswith(("$ ", "% ")):
            line = line[2:]
        for part in re.split(r"\s*(?:&&|\|\||;)\s*", line):
            part = part.strip()
            while re.match(r"^[A-Z_]+=\S*\s", part):  # VAR=value before the command
                part = part.split(None, 1)[1]
            if part.startswith("playbook "):
                out.append(part)
    return out


def _parse(command: str) -> None:
    words = shlex.split(command, comments=True)
    for i, w in enumerate(words):  # a pipe or a redirection ends the command
        if w in ("|", ">", ">>", "2>&1", "<") or w.startswith((">", "2>")):
            words = words[:i]
            break
    words = [w.replace("…", "x") for w in words[1:]]
    try:
        build_parser().parse_args(words)
    except SystemExit as exc:
        if "--help" in words or "-h" in words or "--version" in words:
            return
        raise AssertionError(f"the documented command does not parse: {command}") from exc


_FRAGMENT_KEYS = {"sources", "fleets", "secrets", "notify", "vars", "inventory", "name", "state"}


def _load_yaml(tmp_path: Path, body: str) -> None:
    data = yaml.safe_load(body)
    path = tmp_path / "example.yml"
    if isinstance(data, dict) and "steps" in data:
        if "fleets" not in data:  # a playbook shown without its fleets: the fleets its steps name
            names = sorted({str(s.get("fleet")) for s in data["steps"] if isinstance(s, dict)} - {"None", "controller"})
            body += "fleets:\n" + "".join(f"  {n}: {{hosts: all}}\n" for n in names) if names else ""
        path.write_text(body)
        load_playbook(str(path))
    elif isinstance(data, dict) and set(data) & {"hosts", "groups", "defaults", "dynamic"} and "steps" not in data:
        path.write_text(body)
        load_inventory(str(path), dynamic=False)
    elif isinstance(data, dict) and "stages" in data:  # a GitLab CI file
        for job in data.values():
            if isinstance(job, dict):
                for key in ("script", "before_script", "after_script"):
                    for line in job.get(key) or []:
                        for command in _commands(str(line)):
                            _parse(command)
    elif isinstance(data, dict) and set(data) <= _FRAGMENT_KEYS:
        fleets = "" if "fleets" in data else "fleets: {web: {hosts: web}}\n"
        path.write_text(
            body + "\n" + fleets + "steps:\n  - {id: noop, module: command, fleet: controller, "
            "args: {argv: ['true']}}\n"
        )
        load_playbook(str(path))
    elif isinstance(data, list) and all(isinstance(s, dict) and "module" in s for s in data):
        fleets = {s.get("fleet") for s in data} - {None, "controller"}
        ids = {s.get("id") for s in data}
        # steps the fragment names but does not hold: stand-ins, so references resolve
        named = set(re.findall(r"steps\.([A-Za-z_][\w-]*)", body)) | {
            n for s in data for n in (s.get("needs") or []) if not str(n).startswith("sources.")
        }
        stand_ins = [
            f"  - {{id: {n}, module: command, fleet: controller, args: {{argv: ['true']}}}}"
            for n in sorted(named - ids)
        ]
        sources = set(re.findall(r"sources\.([A-Za-z_][\w-]*)", body))
        doc = (
            ("sources:\n" + "".join(f"  {s}: {{type: local, path: .}}\n" for s in sorted(sources)) if sources else "")
            + "fleets:\n"
            + "".join(f"  {f}: {{hosts: all}}\n" for f in sorted(fleets) or ["web"])
            + "steps:\n"
            + "\n".join(stand_ins)
            + ("\n" if stand_ins else "")
            + textwrap.indent(body, "  ")
        )
        path.write_text(doc)
        load_playbook(str(path))
    elif isinstance(data, dict) and set(data) == {"args"}:
        return  # one step's arguments, explained in the prose around it (no module to check against)
    else:
        raise AssertionError(
            f"a yaml example this test cannot check: keys {sorted(data) if isinstance(data, dict) else type(data)}"
            " (mark it <!-- example: not checked (why) --> or make it whole)"
        )


@pytest.mark.parametrize("doc, line, lang, body, why", list(blocks()))
def test_documented_example(doc, line, lang, body, why, tmp_path):
    if why:
        return
    if lang == "yaml":
        _load_yaml(tmp_path, body)
    elif lang in ("sh", "bash", "console", "shell"):
        for command in _commands(body):
            _parse(command)


def test_the_checks_catch_a_wrong_example(tmp_path):
    with pytest.raises(AssertionError, match="does not parse"):
        _parse("playbook run deploy.yml --frobnicate")
    with pytest.raises(Exception, match="unknown argument 'delet'"):
        _load_yaml(tmp_path, "- {id: s, module: rsync, fleet: web, args: {src: a, dest: /b, delet: true}}\n")
    assert _commands("$ FOO=1 playbook plan a.yml -o p.json || [ $? = 2 ] && playbook apply p.json") == [
        "playbook plan a.yml -o p.json",
        "playbook apply p.json",
    ]
