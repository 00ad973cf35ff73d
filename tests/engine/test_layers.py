"""The house keeps its floor plan: no import cycle, and no folder imports one ranked above it
in the flow except the registry's discovery (the rule and the ranks are .ci/layers.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_import_cycles_and_no_upward_imports():
    proc = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "layers.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "no import cycles, no upward imports" in proc.stdout


def test_the_check_catches_an_upward_import(tmp_path):
    """The checker itself: a model file importing the scheduler is reported."""
    sys.path.insert(0, str(ROOT / ".ci"))
    try:
        import layers
    finally:
        sys.path.pop(0)
    graph = {"engine.model.config": {"engine.execute.scheduler"}, "engine.execute.scheduler": {"engine.model.config"}}
    assert layers.cycles(graph) == [["engine.execute.scheduler", "engine.model.config"]]
    assert layers.rank_of(layers.folder_of("engine.model.config")) < layers.rank_of(
        layers.folder_of("engine.execute.scheduler")
    )
