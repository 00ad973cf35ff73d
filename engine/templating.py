"""Jinja2 templating of step arguments, in the sandbox, with strict undefined.

Only strings written in playbooks and inventories are templates. Values that come from hosts or
from step outputs are inserted as data and never rendered again (a file on a host containing
`{{ ... }}` stays literal). Rendering a value that is only known after an upstream step has been
applied raises `UnknownReference`, which the planner turns into an `unknown` plan.
"""

from __future__ import annotations

import json
import posixpath
import shlex
import threading
from collections.abc import Iterator, Mapping
from typing import Any, cast

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine import template_budget
from engine.errors import TemplateError, ValidationErrors
from engine.model.results import UnknownValue
from engine.template_filters import bounded_filters

__all__ = [
    "is_template",
    "references",
    "undeclared",
    "render",
    "render_value",
    "resolve_vars",
    "UnknownReference",
    "BUILTIN_NAMES",
]

BUILTIN_NAMES = frozenset({"steps", "sources", "host", "run", "release_id", "groups", "playbook_dir"})
"""Names every template may use besides vars: see docs/templating.md."""


class UnknownReference(Exception):
    """A template touched a value that is known only after an upstream step is applied."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(what)


class _Undefined(jinja2.StrictUndefined):
    pass


class _CodeGen(CodeGenerator):
    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        # `for x in xs` iterates `ticked(xs)`, which checks the render budget before each item; a
        # recursive loop is checked at each `loop(...)` call instead
        for loop in node.find_all(nodes.For):
            if not loop.recursive:
                ticked = nodes.ImportedName("engine.template_budget.ticked", lineno=loop.lineno)
                loop.iter = nodes.Call(ticked, [loop.iter], [], None, None, lineno=loop.lineno)
        super().visit_Template(node, frame)

    def _output_child_to_const(self, node: nodes.Expr, frame: Frame, finalize: Any) -> str:
        # Jinja evaluates `{{ … }}` at compile time when it can, even unoptimized, and so would
        # run filters outside the render budget (`{{ '%10000000000s'|format(1) }}`): only
        # literal text is constant here
        if not isinstance(node, nodes.TemplateData):
            raise nodes.Impossible()
        return super()._output_child_to_const(node, frame, finalize)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile or frame.eval_ctx.autoescape:
            return super().visit_Concat(node, frame)
        self.write("environment.bounded_join((")  # `~` checks its size as it joins
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")
        return None


class _Env(ImmutableSandboxedEnvironment):
    """The sandbox, with the size checks of engine/template_budget.py on the operators, method
    calls and `~` that can build a big value in one C call."""

    code_generator_class = _CodeGen
    intercepted_binops = frozenset({"*", "+", "**", "%"})
    bounded_join = staticmethod(template_budget.bounded_join)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        template_budget.check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja's signature)
        args = template_budget.check_call(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Any:
        # jinja wraps `str.format`/`format_map` when they are looked up (no `call` hook sees
        # them): the wrapper checks the size first, with the arguments that set nested widths
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            if is_map:
                template_budget.check_format(fmt, (), args[0] if args else {})
            else:
                template_budget.check_format(fmt, args, kwargs)
            return wrapped(*args, **kwargs)

        return checked

    def getattr(self, obj: Any, attribute: str) -> Any:
        template_budget.tick()
        if isinstance(obj, UnknownValue):
            raise UnknownReference(attribute)
        value = super().getattr(obj, attribute)
        if isinstance(value, UnknownValue):
            raise UnknownReference(attribute)
        return value

    def getitem(self, obj: Any, argument: Any) -> Any:
        template_budget.tick()
        if isinstance(obj, UnknownValue):
            raise UnknownReference(str(argument))
        value = super().getitem(obj, argument)
        if isinstance(value, UnknownValue):
            raise UnknownReference(str(argument))
        return value


def _finalize(value: Any) -> Any:
    if isinstance(value, UnknownValue):
        raise UnknownReference("value")
    return value


# not optimized: constant folding would run filters at compile time, outside the render budget
_ENV = _Env(undefined=_Undefined, autoescape=False, keep_trailing_newline=True, finalize=_finalize, optimized=False)
_ENV.filters.update(
    {
        "quote": lambda v: shlex.quote(str(v)),
        "basename": lambda v: posixpath.basename(str(v)),
        "dirname": lambda v: posixpath.dirname(str(v)),
        "to_json": lambda v: json.dumps(v, sort_keys=True),
    }
)
_ENV.filters.update(bounded_filters())
del _ENV.globals["lipsum"]  # n paragraphs of Latin in one call, out of the budget's reach
_cache: dict[str, jinja2.Template] = {}
_expressions: dict[str, Any] = {}  # a single `{{ expr }}` compiled as an expression (keeps its type)


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


_TOO_DEEP = "template syntax error: nested too deeply"


def _parse(source: str) -> nodes.Template:
    try:
        return _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message} in {source!r}") from None
    except RecursionError:  # jinja's parser recurses once per level of brackets
        raise TemplateError(_TOO_DEEP) from None


def _lookups(tree: nodes.Template) -> Iterator[nodes.Getattr | nodes.Getitem]:
    """Every `x.y` and `x[...]` in a tree."""
    # find_all types the nodes it finds for a tuple of classes as their common base, Expr
    return cast("Iterator[nodes.Getattr | nodes.Getitem]", tree.find_all((nodes.Getattr, nodes.Getitem)))


def references(source: str) -> set[tuple[str, str, str | None]]:
    """`(namespace, name, attribute)` for each `steps.X.Y` / `sources.X.Y` in a template.

    `steps['x']` works too. The attribute is None when the template uses the whole object.
    """
    found: set[tuple[str, str, str | None]] = set()
    tree = _parse(source)

    def key_of(node: nodes.Node) -> str | None:
        if isinstance(node, nodes.Getattr):
            return node.attr
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            return node.arg.value
        return None

    for node in _lookups(tree):
        inner = node.node
        if isinstance(inner, nodes.Name) and inner.name in ("steps", "sources"):
            name = key_of(node)
            if name is not None:
                found.add((inner.name, name, None))
    # second pass for the attribute one level down
    for node in _lookups(tree):
        mid = node.node
        if isinstance(mid, (nodes.Getattr, nodes.Getitem)) and isinstance(mid.node, nodes.Name):
            if mid.node.name in ("steps", "sources"):
                name, attr = key_of(mid), key_of(node)
                if name is not None and attr is not None:
                    found.discard((mid.node.name, name, None))
                    found.add((mid.node.name, name, attr))
    return found


def undeclared(source: str) -> set[str]:
    """Top-level names a template reads (loop variables and `set` targets excluded)."""
    from jinja2 import meta

    return set(meta.find_undeclared_variables(_parse(source)))


def render(source: str, context: Mapping[str, Any], *, what: str = "", stop: threading.Event | None = None) -> Any:
    """Render one template string. A string that is exactly one `{{ expr }}` keeps the type of
    the expression's value (a list stays a list); anything else renders to a string.

    The render has a time and size budget (engine/template_budget.py); `stop` (the run's stop
    event) ends it early with `RenderInterrupted`."""
    tpl = _cache.get(source)
    if tpl is None:
        try:
            tpl = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"template syntax error: {exc.message} in {source!r}", path=what) from None
        except RecursionError:
            raise TemplateError(_TOO_DEEP, path=what) from None
        _cache[source] = tpl
    single = _single_expression(source)
    try:
        with template_budget.budget(stop) as limits:
            if single is not None:
                expr = _expressions.get(single)
                if expr is None:  # compiled once per process, not once per host
                    expr = _expressions[single] = _ENV.compile_expression(single, undefined_to_none=False)
                value = expr(**context)
                if isinstance(value, jinja2.Undefined):
                    str(value)  # raises UndefinedError with jinja's message
                if isinstance(value, UnknownValue):
                    raise UnknownReference(single)
                if isinstance(value, (str, list)):
                    limits.size(len(value), "a value")
                return value
            return template_budget.bounded_output(tpl.root_render_func(tpl.new_context(dict(context))))
    except UnknownReference:
        raise
    except TemplateError as exc:  # a budget: the same error, naming the value
        raise type(exc)(exc.message, path=what) from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"undefined variable: {_undefined_name(exc)}", path=what) from None
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"template not allowed by the sandbox: {exc}", path=what) from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template error: {exc}", path=what) from None
    except (MemoryError, RecursionError):
        raise TemplateError("template ran out of memory or recursed too deeply", path=what) from None
    except (TypeError, ValueError, ZeroDivisionError, AttributeError, OverflowError) as exc:
        raise TemplateError(f"template error: {exc}", path=what) from None


def _undefined_name(exc: jinja2.UndefinedError) -> str:
    msg = str(exc.message or exc)
    # jinja: "'foo' is undefined" / "'dict object' has no attribute 'x'"
    return msg.replace(" is undefined", "") if msg.endswith(" is undefined") else msg


def _single_expression(source: str) -> str | None:
    s = source.strip()
    if s.startswith("{{") and s.endswith("}}") and s.count("{{") == 1 and "{%" not in s and "{#" not in s:
        return s[2:-2].strip()
    return None


def render_value(value: Any, context: Mapping[str, Any], *, what: str = "", stop: threading.Event | None = None) -> Any:
    """Render every template string inside a nested structure of dicts and lists."""
    if isinstance(value, str):
        return render(value, context, what=what, stop=stop) if is_template(value) else value
    if isinstance(value, Mapping):
        return {
            k: render_value(v, context, what=f"{what}.{k}" if what else str(k), stop=stop) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [render_value(v, context, what=f"{what}[{i}]", stop=stop) for i, v in enumerate(value)]
    return value


def _template_names(value: Any) -> Iterator[str]:
    if isinstance(value, str) and is_template(value):
        yield from undeclared(value)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _template_names(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _template_names(v)


def resolve_vars(raw: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Render vars that reference other vars (`app_dir: "/srv/{{ app }}"`), in dependency order.

    `base` holds names available to every var (run facts, `host`). A cycle is an error naming it.
    """
    base = dict(base or {})
    done: dict[str, Any] = {k: v for k, v in raw.items() if not any(is_template(x) for x in _flatten(v))}
    plain = dict(base)
    plain.update(done)
    deps: dict[str, list[str]] = {}

    def deps_of(name: str) -> list[str]:
        if name not in deps:
            try:
                deps[name] = sorted({n for n in _template_names(raw[name]) if n in raw and n != name})
            except TemplateError as exc:  # a syntax error: name the var, so it is located
                raise TemplateError(exc.message, path=f"vars.{name}") from None
        return deps[name]

    broken: set[str] = set()  # failed, or using a var that failed: each error is reported once
    errors: list[TemplateError] = []

    def resolve(start: str) -> None:
        # depth first, without recursion (a chain of vars can be long); `path` is the chain
        # being resolved, a name met again on it is a cycle
        path, on_path = [start], {start}
        try:
            todo = {start: iter(deps_of(start))}
            while path:
                name = path[-1]
                for dep in todo[name]:
                    if dep in done:
                        continue
                    if dep in broken:
                        raise _UsesBroken()
                    if dep in on_path:
                        cycle = " -> ".join(path[path.index(dep) :] + [dep])
                        raise TemplateError(f"vars reference each other in a cycle: {cycle}")
                    path.append(dep)
                    on_path.add(dep)
                    todo[dep] = iter(deps_of(dep))
                    break
                else:
                    ctx = dict(plain)
                    ctx.update((d, done[d]) for d in deps_of(name))
                    done[name] = render_value(raw[name], ctx, what=f"vars.{name}")
                    path.pop()
                    on_path.discard(name)
        except template_budget.RenderInterrupted:
            raise
        except (TemplateError, _UsesBroken) as exc:  # every var on the path uses the one that failed
            broken.update(path)
            if isinstance(exc, TemplateError):
                errors.append(exc)

    for key in raw:
        if key not in done and key not in broken:
            resolve(key)
    if errors:
        raise errors[0] if len(errors) == 1 else ValidationErrors(errors)
    return done


class _UsesBroken(Exception):
    """A var needs one whose error is already reported."""


def _flatten(value: Any) -> Iterator[Any]:
    if isinstance(value, Mapping):
        for v in value.values():
            yield from _flatten(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _flatten(v)
    else:
        yield value
