"""Every module's `examples` are real YAML a playbook can hold: each example step (or source) is
loaded by the real loader inside a small playbook, checked like `playbook validate` checks (host
patterns, templates) and, where its arguments are not templates, built into the module's `Args`
the way a step's arguments are before `plan`. `playbook modules NAME`, `--format json` and
docs/modules.md show them."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from engine import api
from engine.argschema import build
from engine.cli import main
from engine.docs import module_json
from engine.module import all_modules
from engine.templating import is_template

NAMES = sorted(all_modules())


def _templated(value) -> bool:
    if isinstance(value, str):
        return is_template(value)
    if isinstance(value, dict):
        return any(_templated(v) for v in value.values())
    if isinstance(value, list):
        return any(_templated(v) for v in value)
    return False


def _stand_in(step_id: str) -> dict:
    """A step another example needs: another module's example step of that id (so its outputs
    are the ones referenced), else a controller command."""
    for other in all_modules().values():
        if getattr(other, "source_type", None):
            continue
        for step in yaml.safe_load(other.examples):
            if step["id"] == step_id:
                return {k: v for k, v in step.items() if k != "needs"}
    return {"id": step_id, "module": "command", "fleet": "controller", "args": {"argv": ["true"]}}


@pytest.mark.parametrize("name", NAMES)
def test_examples_load_and_validate(name, tmp_path):
    m = all_modules()[name]
    assert m.examples.strip(), f"module '{name}' declares no examples"
    data = yaml.safe_load(m.examples)
    source_type = getattr(m, "source_type", None)
    if source_type:
        assert isinstance(data, dict) and set(data) == {"sources"}, f"{name}: a source module's examples are `sources:`"
        assert {s["type"] for s in data["sources"].values()} == {source_type}
        sources, steps = (
            data["sources"],
            [{"id": "noop", "module": "command", "fleet": "controller", "args": {"argv": ["true"]}}],
        )
    else:
        assert isinstance(data, list) and data, f"{name}: examples must be a list of steps"
        assert {s["module"] for s in data} == {name}
        sources, steps = {}, list(data)
    ids = {s["id"] for s in steps}
    needed = {n for s in steps for n in s.get("needs", [])} | {
        ref.split(".")[1] for s in steps for ref in _refs(s.get("args", {}), "steps.")
    }
    steps += [_stand_in(n) for n in sorted(needed - ids)]
    for ref in {r.split(".")[1] for s in steps for r in _refs(s.get("args", {}), "sources.")} - set(sources):
        sources[ref] = {"type": "local", "path": "."}
    fleets = {s["fleet"] for s in steps} - {"controller"}
    playbook = {
        "name": f"example-{name}",
        "vars": {"widgets_version": "1.0.0"},
        "fleets": {f: {"hosts": "all"} for f in sorted(fleets)},
        "steps": steps,
    }
    if sources:
        playbook["sources"] = sources
    pb = tmp_path / "pb.yml"
    pb.write_text(yaml.safe_dump(playbook, sort_keys=False))
    inv = tmp_path / "inv.yml"
    inv.write_text(yaml.safe_dump({"hosts": {"web1": {"connection": "local"}}}))
    loaded = api.load(str(pb), str(inv))
    api.check(loaded)
    for s in data if not source_type else sources.values():
        args = dict(s.get("args", {})) if not source_type else {k: v for k, v in s.items() if k != "type"}
        if not _templated(args):
            build(m.Args, args, path=f"{name} example")


def _refs(value, prefix: str) -> set[str]:
    text = json.dumps(value)
    return set(re.findall(re.escape(prefix) + r"[A-Za-z_][\w-]*", text))


def test_modules_name_shows_the_examples_in_text_and_json(capsys):
    assert main(["modules", "rsync"]) == 0
    out = capsys.readouterr().out
    assert "Examples:\n  - id: sync\n    module: rsync\n" in out
    assert main(["modules", "s3_fetch", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert yaml.safe_load(doc["s3_fetch"]["examples"])["sources"]["widgets"]["type"] == "s3"
    assert all(module_json()[n]["examples"].strip() for n in NAMES)
