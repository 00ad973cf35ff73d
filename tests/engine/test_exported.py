"""Each module says what it offers: `__all__` names exactly its public classes and functions
(as httpx's test_exported_members does for its package)."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: modules without public API of their own (entry points and empty packages)
NO_API = {"engine.cli.__main__"}


def _module_names() -> list[str]:
    names = []
    for top in ("engine", "modules"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
                body = ast.parse(path.read_text()).body
                if all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body):
                    continue  # an empty package (a docstring at most)
            names.append(".".join(parts))
    return [n for n in names if n not in NO_API]


@pytest.mark.parametrize("name", _module_names())
def test_all_names_the_public_api(name):
    mod = importlib.import_module(name)
    exported = getattr(mod, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
    missing = [n for n in exported if not hasattr(mod, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"
    public = {
        n
        for n, obj in vars(mod).items()
        if not n.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == name
    }
    unlisted = sorted(public - set(exported))
    assert not unlisted, f"{name} defines public names missing from __all__: {unlisted}"
