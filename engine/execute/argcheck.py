"""Render every template of a step for every host of its fleet, the way the step will be
rendered when it runs, and convert the rendered arguments as the module will: what fails here
would fail on that host at run time, after earlier steps ran. Outputs of other steps are typed
placeholders (engine/execute/placeholders.py).

Each mistake is reported once, at the argument it is in: when it happens on some hosts only,
the message names them (`for host web02`); when on all, no host is named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
from jinja2 import nodes

from engine import templating
from engine.argschema import build, field_errors, group_errors
from engine.errors import ArgError, PlaybookError, TemplateError, suggest
from engine.execute.placeholders import dotted, step_location, walk_templates
from engine.model.config import Step
from engine.module import find_module

__all__ = ["StepCheck"]

_AST_ENV = jinja2.Environment()  # only to parse: finds which lookup an undefined-attribute error is about
_NO_ATTR = re.compile(r"has no attribute '([^']+)'")
_UNDEFINED = re.compile(r"^undefined variable: '([^']+)'$")


class StepCheck:
    """The findings for one step, collected host by host, then reported once each."""

    def __init__(self, step: Step, hosts: Sequence[str | None], skip: set[tuple]) -> None:
        self.step = step
        self.hosts = list(hosts)
        self.skip = skip  # template paths with an error of their own (a missing output)
        self.module = find_module(step.module)
        self.templates = [(p, t) for p, t in walk_templates(step) if p not in skip]
        # arguments that read outputs: their placeholders may not satisfy the module's rules
        self.reads_outputs: set[Any] = set()
        for path, text in self.templates:
            if path[0] == "args" and re.search(r"\b(steps|sources)\b", text):
                self.reads_outputs.add(path[1])
        self.found: dict[tuple, tuple[PlaybookError, list[str | None]]] = {}

    def _note(self, path: tuple, error: PlaybookError, host: str | None) -> None:
        if path in self.found:
            self.found[path][1].append(host)
        else:
            self.found[path] = (error, [host])

    def host(self, host: str | None, ctx: Mapping[str, Any]) -> None:
        """Render the step's templates and convert its arguments as on `host` (context `ctx`)."""
        failed: set[Any] = set()
        for path, source in self.templates:
            try:
                templating.render(source, ctx, what=dotted(self.step.id, path))
            except templating.UnknownReference:
                failed.add(path[1] if path[0] == "args" else None)
            except TemplateError as exc:
                failed.add(path[1] if path[0] == "args" else None)
                if path[0] == "args" and path[1] in self.reads_outputs and exc.message.startswith("template error"):
                    continue  # may come from a placeholder's value, not from the template
                self._note(
                    path, TemplateError(_reword(exc.message, source, ctx), path=dotted(self.step.id, path)), host
                )
        if self.module is None:
            return
        ready = {k: v for k, v in self.step.args.items() if k not in failed and k not in self.reads_outputs}
        try:
            rendered = templating.render_value(ready, ctx)
        except (templating.UnknownReference, PlaybookError):
            return
        wrong_fields = field_errors(self.module.Args, rendered, path=dotted(self.step.id, ("args",)))
        for name, wrong in wrong_fields:
            self._note(("args", name), ArgError(wrong.message, path=wrong.path), host)
        unknown = [k for k in self.step.args if k not in ready]
        for wrong in group_errors(self.module.Args, rendered, "", unknown=unknown):
            self._note(("args",), ArgError(wrong.message, path=dotted(self.step.id, ("args",))), host)
        offline = getattr(self.module, "check_args", None)
        if offline is None or wrong_fields or len(ready) < len(self.step.args):
            return
        try:
            offline(build(self.module.Args, rendered, path=dotted(self.step.id, ("args",))), ctx)
        except PlaybookError as exc:  # the module's own check: path is the argument's name
            where: tuple = ("args", exc.path) if exc.path in self.step.args else ("args",)
            self._note(where, type(exc)(exc.message, path=dotted(self.step.id, where)), host)

    def errors(self) -> list[PlaybookError]:
        out: list[PlaybookError] = []
        for path, (error, hosts) in self.found.items():
            message = error.message
            named = [h for h in dict.fromkeys(hosts) if h is not None]
            if named and len(named) < len(self.hosts):
                more = f" and {len(named) - 3} more" if len(named) > 3 else ""
                message += f" for host{'s' if len(named) > 1 else ''} {', '.join(named[:3])}{more}"
            out.append(type(error)(message, location=step_location(self.step, path), path=error.path))
        return out


def _reword(message: str, source: str, ctx: Mapping[str, Any]) -> str:
    """`undefined variable 'nope' (did you mean ...)` and `'host' has no attribute 'nmae' (did
    you mean 'name'?)` from jinja's wording, which names neither the object nor a near miss."""
    m = _UNDEFINED.match(message)
    if m:
        name = m.group(1)
        return f"undefined variable '{name}'" + suggest(name, [k for k in ctx if not k.startswith("_")])
    m = _NO_ATTR.search(message)
    if not m:
        return message
    attr = m.group(1)
    try:
        tree = _AST_ENV.parse(source)
    except jinja2.TemplateSyntaxError:
        return message
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            key: Any = node.attr
        elif isinstance(node, nodes.Getitem):
            key = getattr(node.arg, "value", None)
        else:
            continue
        if key != attr:
            continue
        base = _dotted_name(node.node)
        value = _lookup(ctx, base) if base else None
        if isinstance(value, Mapping):
            return f"'{base}' has no attribute '{attr}'" + suggest(attr, [str(k) for k in value])
    return message


def _dotted_name(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        inner = _dotted_name(node.node)
        return f"{inner}.{node.attr}" if inner else None
    return None


def _lookup(ctx: Mapping[str, Any], dotted_name: str) -> Any:
    value: Any = ctx
    for part in dotted_name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value
