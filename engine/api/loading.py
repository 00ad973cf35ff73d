"""Load a playbook and its inventory; check them before any host is touched."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.load.inputs import find_inventory
from engine.model.config import Loaded

__all__ = ["load", "check"]


def load(playbook_path: str, inventory_path: str | None = None) -> Loaded:
    from engine.load.inventory import load_inventory
    from engine.load.playbook import load_playbook

    pb = load_playbook(playbook_path)
    inv = load_inventory(find_inventory(pb, inventory_path))
    return Loaded(pb, inv)


def check(loaded: Loaded, extra_vars: Mapping[str, Any] | None = None, limit: str | None = None, **kw: Any) -> None:
    """Everything that can be known wrong without touching a host (engine/execute/check.py);
    raises ValidationErrors listing every problem."""
    from engine.execute.check import check as check_loaded  # jinja2 and networkx: not for `load`

    check_loaded(loaded, extra_vars, limit, **kw)
