"""Arguments whose allowed values are a fixed set (a `Literal`), checked at validate time when
their template needs nothing but vars: `action: "{{ canary_action }}"` with
`-e canary_action=promot` is a located validate error, not a run that skips every step."""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal

from engine import templating
from engine.argschema import describe_value, expected_name
from engine.errors import ArgError, PlaybookError
from engine.module import get_module

__all__ = ["check_choices"]

_RUN_TIME = frozenset({"steps", "sources"})


def _choices(tp: Any) -> tuple | None:
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    return None


def check_choices(
    step: Any, hosts: Iterable[str | None], context: Callable[[str | None], dict[str, Any]], location: Any
) -> list[ArgError]:
    """An ArgError per templated Literal argument of `step` that renders, with vars alone, to a
    value outside its choices (reported once, for the first host where it does)."""
    try:
        hints = typing.get_type_hints(get_module(step.module).Args)
    except (PlaybookError, NameError, TypeError):
        return []
    errors: list[ArgError] = []
    for name, source in dict(step.args).items():
        choices = _choices(hints.get(name))
        if choices is None or not templating.is_template(source):
            continue
        try:
            if templating.undeclared(source) & _RUN_TIME:
                continue
        except PlaybookError:
            continue  # reported by the template check
        for h in hosts:
            try:
                value = templating.render(source, context(h), what=f"steps.{step.id}.args.{name}")
            except (PlaybookError, templating.UnknownReference):
                break
            if value not in choices:
                errors.append(
                    ArgError(
                        f"'{name}' must be {expected_name(hints[name])} (got {describe_value(value)})"
                        + (f" for host {h}" if h else ""),
                        location=location(("args", name)),
                        path=f"steps.{step.id}.args.{name}",
                    )
                )
                break
    return errors
