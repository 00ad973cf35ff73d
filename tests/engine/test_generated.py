"""Generated files are what their generators produce from today's code: the JSON Schemas in
schemas/ (`python -m engine.load.schemas`) and docs/modules.md (`python -m engine.docs`), both
from the modules' argument definitions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine.load.schemas import rendered_schemas

ROOT = Path(__file__).resolve().parents[2]


def test_schema_files_are_generated():
    rendered = rendered_schemas()
    assert set(rendered) == {p.name for p in (ROOT / "schemas").glob("*.json")}
    for name, text in rendered.items():
        assert (ROOT / "schemas" / name).read_text() == text, (
            f"schemas/{name} is stale: run `python -m engine.load.schemas`"
        )


def test_module_docs_are_generated(tmp_path):
    out = tmp_path / "modules.md"
    subprocess.run(
        [sys.executable, "-m", "engine.docs", str(out)], cwd=ROOT, check=True, capture_output=True, timeout=120
    )
    assert out.read_text() == (ROOT / "docs" / "modules.md").read_text(), (
        "docs/modules.md is stale: run `python -m engine.docs docs/modules.md`"
    )
