"""Jinja's filters that can build a big value in one call (`center`, `indent`, `format`,
`replace`, `join`, `batch`, `slice`, `sum`, `wordwrap`), each measured against the render's size
limit (engine/template_budget.py) before it runs; engine/templating.py installs them in its
sandbox in place of Jinja's own."""

from __future__ import annotations

import itertools
from typing import Any

import jinja2
from jinja2 import filters as jinja_filters

from engine import template_budget

__all__ = ["bounded_filters"]


def bounded_filters() -> dict[str, Any]:
    """Jinja's filters that can build a big string in one call, checked against the size limit first."""

    def size(n: int, what: str = "a string") -> None:
        b = template_budget.current()
        if b is not None:
            b.size(n, what)

    def center(value: Any, width: int = 80) -> str:
        size(int(width) if isinstance(width, int) else 0, "a padded string")
        return jinja_filters.do_center(value, width)

    def indent(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
        text = str(s)
        pad = width if isinstance(width, int) else len(str(width))
        size(len(text) + (text.count("\n") + 1) * pad)
        return jinja_filters.do_indent(s, width, first, blank)

    def fmt(value: str, *args: Any, **kwargs: Any) -> str:
        template_budget.check_binop("%", str(value), kwargs or args)
        return jinja_filters.do_format(value, *args, **kwargs)

    @jinja2.pass_eval_context
    def replace(eval_ctx: Any, s: Any, old: str, new: str, count: int | None = None) -> str:
        text = str(s)
        size(len(text) + (text.count(str(old)) + 1) * len(str(new)))
        return jinja_filters.do_replace(eval_ctx, s, old, new, count)

    @jinja2.pass_eval_context
    def join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
        if attribute is None and not eval_ctx.autoescape:
            return template_budget.bounded_join(value, str(d))
        return jinja_filters.do_join(eval_ctx, value, d, attribute)

    def batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
        if fill_with is not None and isinstance(linecount, int):
            size(linecount, "a list")  # the last batch is filled up to `linecount`
        return jinja_filters.do_batch(value, linecount, fill_with)

    def slice_(value: Any, slices: int, fill_with: Any = None) -> Any:
        if isinstance(slices, int):
            size(slices, "a list")  # `slices` lists, however short the input
        return jinja_filters.sync_do_slice(value, slices, fill_with)

    @jinja2.pass_environment
    def sum_(environment: jinja2.Environment, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
        if not isinstance(start, (list, tuple)):
            return jinja_filters.sync_do_sum(environment, iterable, attribute, start)
        # lists: joined once, measured as they come (`sum` copies the growing total for each item)
        if attribute is not None:
            iterable = map(jinja_filters.make_attrgetter(environment, attribute), iterable)
        items, total = [], len(start)
        for item in iterable:
            items.append(item)
            total += len(item) if isinstance(item, (list, tuple)) else 0
            size(total, "a list")
        if all(type(item) is type(start) for item in items):
            return type(start)(itertools.chain(start, *items))
        return sum(items, start)  # mixed types: sum's own TypeError

    @jinja2.pass_environment
    def wordwrap(
        environment: jinja2.Environment,
        s: Any,
        width: int = 79,
        break_long_words: bool = True,
        wrapstring: str | None = None,
        break_on_hyphens: bool = True,
    ) -> str:
        text = str(s)
        sep = environment.newline_sequence if wrapstring is None else str(wrapstring)
        if isinstance(width, int) and width > 0:
            size(len(text) + (len(text) // width + text.count("\n") + 1) * len(sep))
        return jinja_filters.do_wordwrap(environment, s, width, break_long_words, wrapstring, break_on_hyphens)

    return {
        "center": center,
        "indent": indent,
        "format": fmt,
        "replace": replace,
        "join": join,
        "batch": batch,
        "slice": slice_,
        "sum": sum_,
        "wordwrap": wordwrap,
    }
