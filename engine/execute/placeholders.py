"""What `check` puts where a template reads an output that exists only once a step has run:
a placeholder of the output's declared type (`output(doc, int)` gives 0, `str` gives ""), so
`{{ steps.build.rc + 1 }}` and `{{ sources.site.path }}/{{ host.nmae }}` render at check time
and the mistake next to the output is found. An output without a declared type is unknown: a
template reading it is not rendered further (as in a dry run). A reference to an output the
step's module does not have is an error of its own.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Literal, Union

from engine import templating
from engine.errors import GraphError, PlaybookError, TemplateError, suggest
from engine.model.config import Playbook, Step
from engine.model.results import UNKNOWN
from engine.module import find_module

__all__ = ["placeholder", "output_namespaces", "output_errors", "walk_templates", "step_location", "dotted"]

_SIMPLE: dict[Any, Any] = {str: "", int: 0, float: 0.0, bool: False, list: [], tuple: [], dict: {}}


def placeholder(tp: Any) -> Any:
    """A value of type `tp` standing for an output not known yet; UNKNOWN when `tp` says nothing."""
    if tp in _SIMPLE:
        return _SIMPLE[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal and args:
        return args[0]
    if origin in (Union, types.UnionType):
        for a in args:
            if a is not type(None):
                return placeholder(a)
    if origin in (list, tuple, typing.Sequence):
        return []
    if origin in (dict, typing.Mapping, Mapping):
        return {}
    return UNKNOWN


def _declared(step: Step) -> Mapping[str, Any]:
    module = find_module(step.module)
    return module.outputs if module is not None else {}


def output_namespaces(
    playbook: Playbook, recorded: Mapping[tuple[str, str | None], Mapping[str, Any]] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`steps`, `sources`) with a placeholder for every output of every step; outputs a
    rollback recorded for a step stand in for it with their recorded values."""
    steps_ns: dict[str, Any] = {}
    sources_ns: dict[str, Any] = {}
    rec: dict[str, dict[str, Any]] = {}
    for (sid, _host), outs in (recorded or {}).items():
        rec.setdefault(sid, {}).update(outs)
    values: dict[str, dict[str, Any]] = {sid: dict(outs) for sid, outs in rec.items()}
    for step in playbook.steps:
        mine = values.setdefault(step.id, {})
        for name, doc in _declared(step).items():
            mine[name] = placeholder(getattr(doc, "type", Any))
    for sid, outs in values.items():
        if sid.startswith("sources."):
            sources_ns[sid[len("sources.") :]] = outs
        else:
            steps_ns[sid] = outs
    return steps_ns, sources_ns


def walk_templates(step: Step) -> Iterator[tuple[tuple, str]]:
    """(path, template) of every template string of a step: its args, then its `when`."""

    def walk(value: Any, path: tuple) -> Iterator[tuple[tuple, str]]:
        if isinstance(value, str):
            if templating.is_template(value):
                yield path, value
        elif isinstance(value, Mapping):
            for k, v in value.items():
                yield from walk(v, path + (k,))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                yield from walk(v, path + (i,))

    yield from walk(dict(step.args), ("args",))
    if step.when:
        yield ("when",), step.when if templating.is_template(step.when) else "{{ " + step.when + " }}"


def step_location(step: Step, path: tuple) -> Any:
    """Where the value at `path` ("args", ...) of a step is written; the step's own place else."""
    locs = step.args_locations or {}
    if path and path[0] == "args":
        inner = path[1:]
        while inner:
            if inner in locs:
                return locs[inner]
            inner = inner[:-1]
    return step.location


def dotted(step_id: str, path: tuple) -> str:
    """`steps.deploy.args.argv[1]`; a source's arguments are its own keys: `sources.site.path`."""
    if step_id.startswith("sources.") and path[:1] == ("args",):
        path = path[1:]
        out = step_id
    else:
        out = f"steps.{step_id}"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def output_errors(
    playbook: Playbook, recorded: Mapping[tuple[str, str | None], Mapping[str, Any]] | None = None
) -> tuple[list[PlaybookError], set[tuple[str, tuple]]]:
    """Errors for `steps.X.Y` / `sources.X.Y` where X's module has no output Y, and the
    (step id, path) of each template that has one (not rendered again)."""
    by_id = {s.id: s for s in playbook.steps}
    recorded_names: dict[str, set[str]] = {}
    for (sid, _host), outs in (recorded or {}).items():
        recorded_names.setdefault(sid, set()).update(outs)
    errors: list[PlaybookError] = []
    bad: set[tuple[str, tuple]] = set()
    for step in playbook.steps:
        for path, source in walk_templates(step):
            try:
                refs = templating.references(source)
            except TemplateError:
                continue  # the loader reported the syntax error
            for namespace, name, attr in sorted(refs, key=lambda r: (r[0], r[1], r[2] or "")):
                target = by_id.get(name if namespace == "steps" else f"sources.{name}")
                if target is None or attr is None:
                    continue
                names = set(_declared(target)) | recorded_names.get(target.id, set())
                if attr in names:
                    continue
                what = "step" if namespace == "steps" else "source"
                errors.append(
                    GraphError(
                        f"{what} '{name}' (module {target.module}) has no output '{attr}'{suggest(attr, sorted(names))}"
                        f"; it has: {', '.join(sorted(names))}",
                        location=step_location(step, path),
                        path=dotted(step.id, path),
                    )
                )
                bad.add((step.id, path))
    return errors, bad
