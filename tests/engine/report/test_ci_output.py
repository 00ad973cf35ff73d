"""Output a CI log can use: no wrapping in a pipe, whole run ids in `history`, JSON load errors,
a stable result order, and real `--format json`/`jsonl` output valid against schemas/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

ROOT = Path(__file__).parents[3]
LONG_HOST = "a-very-long-host-name-so-that-one-line-of-output-is-wider-than-eighty-columns"


def schema(name: str) -> Draft202012Validator:
    doc = json.loads((ROOT / "schemas" / name).read_text())
    Draft202012Validator.check_schema(doc)
    return Draft202012Validator(doc)


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}  # a pipe, as in CI
    env.update(PYTHONPATH=str(ROOT), PLAYBOOK_LOCK_DIR=str(cwd / "locks"))
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Two hosts whose steps finish in the opposite of host order: `first`'s steps wait for a
    file that `second`'s last step writes (an event, not a delay)."""
    (tmp_path / "inv.yml").write_text(
        "hosts:\n"
        f"  first: {{connection: local, vars: {{wait_for: second-done, mark: first}}}}\n"
        f"  {LONG_HOST}: {{connection: local, vars: {{wait_for: '', mark: second}}}}\n"
        "groups:\n"
        f"  web: {{hosts: [first, {LONG_HOST}]}}\n"
    )
    (tmp_path / "pb.yml").write_text(
        "name: ci\n"
        "inventory: inv.yml\n"
        "fleets:\n"
        "  web: {hosts: web}\n"
        "steps:\n"
        "  - id: one\n"
        "    module: command\n"
        "    fleet: web\n"
        "    args:\n"
        "      argv: [sh, -c, 'test -z \"$1\" || while [ ! -e \"$1\" ]; do sleep 0.05; done', sh, '{{ wait_for }}']\n"
        "  - id: two\n"
        "    module: command\n"
        "    fleet: web\n"
        "    args:\n"
        "      argv: [sh, -c, 'touch \"$1\"-done', sh, '{{ mark }}']\n"
    )
    return tmp_path


def test_piped_output_is_not_wrapped_and_history_shows_whole_run_ids(project: Path):
    run = cli(project, "run", "pb.yml", "-v", "--state-dir", "state")
    assert run.returncode == 0, run.stdout + run.stderr
    assert any(LONG_HOST in line and "two" in line for line in run.stdout.splitlines()), run.stdout
    runs = json.loads(cli(project, "history", "--state-dir", "state", "--format", "json").stdout)
    text = cli(project, "history", "--state-dir", "state")
    row = next(line for line in text.stdout.splitlines() if runs[0]["run_id"] in line)
    assert runs[0]["release_id"] in row, text.stdout


def test_json_results_are_in_host_then_step_order(project: Path):
    proc = cli(project, "run", "pb.yml", "--state-dir", "state", "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    schema("run.schema.json").validate(doc)
    assert [(r["host"], r["step"]) for r in doc["results"]] == [
        ("first", "one"),
        ("first", "two"),
        (LONG_HOST, "one"),
        (LONG_HOST, "two"),
    ]


def test_jsonl_events_validate_against_the_schema(project: Path):
    proc = cli(project, "plan", "pb.yml", "--state-dir", "state", "--format", "jsonl")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    validator = schema("events.schema.json")
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    for event in events:
        validator.validate(event)
    assert {e["event"] for e in events} >= {"run_started", "step_started", "step_finished", "run_finished"}
    schema("run.schema.json").validate(events[-1]["summary"])


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_load_errors_are_json_with_json_output(project: Path, fmt: str):
    (project / "bad.yml").write_text("name: bad\ninventory: inv.yml\nsteps:\n  - id: x\n    module: nope\n")
    proc = cli(project, "plan", "bad.yml", "--state-dir", "state", "--format", fmt)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    schema("run.schema.json" if fmt == "json" else "events.schema.json").validate(doc)
    error = doc["errors"][0]
    assert (error["file"], error["line"], error["kind"]) == ("bad.yml", 5, "ValidationError"), doc
    assert "nope" in error["message"]
    assert "error: bad.yml:5:" in proc.stderr  # the log still says it in words


def test_output_schemas_reject_what_the_format_does_not_allow():
    with pytest.raises(Exception, match="is not valid"):
        schema("run.schema.json").validate({"format_version": 1, "exit_code": 1, "errors": []})
    with pytest.raises(Exception, match="is not valid"):
        schema("events.schema.json").validate({"event": "step_finished", "time": 1.0, "step": "x"})
