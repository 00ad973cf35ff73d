#!/usr/bin/env python3
"""The import layers of engine/ and modules/, and what breaks them.

Every import counts, function-level ones too (they are how start-up stays fast, not a way
around the layering). A file sits one layer above the highest file it imports. Folders are
ranked by where they sit in the flow (RANKS, lowest first); a file may import files of its own
folder and of lower-ranked folders only. The one allowed exception is the module registry's
discovery: engine/module.py imports `modules.<name>` to find the module a step names.

    python3 .ci/layers.py            # print the layers, folder by folder and file by file
    python3 .ci/layers.py --check    # exit 1 on an import cycle or an upward import

tests/engine/test_layers.py runs the check.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: folders (dotted), lowest first; a file belongs to the longest prefix listed here
RANKS: list[list[str]] = [
    ["engine.errors", "engine.secrets", "engine.workers"],
    ["engine.model"],
    ["engine.yamlio", "engine.templating", "engine.template_filters", "engine.template_budget", "engine.connection"],
    ["engine.module", "engine.argschema"],
    ["engine.load", "engine.record", "engine.report"],
    ["engine.execute"],
    ["modules"],
    ["engine.docs", "engine.api"],
    ["engine.cli"],
]
#: (importer, imported folder) pairs allowed to point up, with the reason
ALLOWED_UP = {("engine.module", "modules"): "the registry discovers the module a step names"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def files() -> dict[str, Path]:
    found = {}
    for top in ("engine", "modules"):
        for p in sorted((ROOT / top).rglob("*.py")):
            if p == ROOT / "engine" / "__init__.py":
                continue  # the package's docstring only
            found[module_name(p)] = p
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project files `name` imports (a package import counts as its __init__)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in known else base)
    return out


def folder_of(name: str) -> str:
    best = ""
    for group in RANKS:
        for folder in group:
            if (name == folder or name.startswith(folder + ".")) and len(folder) > len(best):
                best = folder
    if not best:
        raise SystemExit(f"{name}: not in any folder of RANKS (.ci/layers.py)")
    return best


def rank_of(folder: str) -> int:
    return next(i for i, group in enumerate(RANKS) if folder in group)


def analyse() -> tuple[dict[str, set[str]], list[list[str]], list[str]]:
    """(import graph, cycles, upward imports)."""
    found = files()
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    upward = []
    for name, deps in graph.items():
        src = folder_of(name)
        for dep in deps:
            dst = folder_of(dep)
            if dst != src and rank_of(dst) > rank_of(src) and (src, dst) not in ALLOWED_UP:
                upward.append(f"{name} imports {dep} ({src} is below {dst})")
    return graph, cycles(_without_allowed(graph)), sorted(upward)


def _without_allowed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {
        name: {d for d in deps if (folder_of(name), folder_of(d)) not in ALLOWED_UP} for name, deps in graph.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one file (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """1 + the highest layer a node imports (1 for a node that imports nothing here)."""
    memo: dict[str, int] = {}

    def layer(v: str, seen: frozenset[str] = frozenset()) -> int:
        if v in memo:
            return memo[v]
        deps = [d for d in graph.get(v, ()) if d not in seen]
        memo[v] = 1 + max((layer(d, seen | {v}) for d in deps), default=0)
        return memo[v]

    return {v: layer(v) for v in graph}


def main(argv: list[str]) -> int:
    graph, found_cycles, upward = analyse()
    acyclic = _without_allowed(graph)
    by_file = layers(acyclic)
    folder_graph: dict[str, set[str]] = {}
    for name, deps in acyclic.items():
        folder_graph.setdefault(folder_of(name), set()).update(
            folder_of(d) for d in deps if folder_of(d) != folder_of(name)
        )
    by_folder = layers(folder_graph)
    if "--check" not in argv:
        print(f"folders: {len(by_folder)} in {max(by_folder.values())} layers")
        for n in range(max(by_folder.values()), 0, -1):
            print(f"  {n:2} " + ", ".join(sorted(f for f, v in by_folder.items() if v == n)))
        print(f"files: {len(by_file)} in {max(by_file.values())} layers, {sum(len(d) for d in graph.values())} imports")
        for n in range(max(by_file.values()), 0, -1):
            print(f"  {n:2} " + ", ".join(sorted(f for f, v in by_file.items() if v == n)))
        for (src, dst), why in ALLOWED_UP.items():
            print(f"allowed upward: {src} -> {dst} ({why})")
    for comp in found_cycles:
        print("import cycle: " + " <-> ".join(comp), file=sys.stderr)
    for line in upward:
        print("upward import: " + line, file=sys.stderr)
    if not found_cycles and not upward:
        print(f"no import cycles, no upward imports ({len(graph)} files)")
    return 1 if found_cycles or upward else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
