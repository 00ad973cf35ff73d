"""JSON Schemas of playbook's machine-readable output, written to schemas/ by
`python -m engine.load.schemas`:

- `run.schema.json`: what `plan`/`run`/`apply`/`rollback --format json` print: the run
  document of engine/report/jsondoc.py, or the error document when the command stopped before
  a run (a playbook that does not load, a lock held by another run);
- `events.schema.json`: one line of `--format jsonl`: one object per event, or the error event.

Both follow format_version 1: keys may be added, none is removed or changes meaning, so objects
allow additional properties. tests/engine/report/test_output_schema.py validates real output.
"""

from __future__ import annotations

from typing import Any

__all__ = ["output_schemas"]

_ID = "https://playbook.invalid/schemas/"
_STATUS = ["ok", "changed", "failed", "skipped", "unreachable", "unknown"]


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
        **extra,
    }


def _nullable(kind: str | list[str]) -> dict[str, Any]:
    kinds = [kind] if isinstance(kind, str) else kind
    return {"type": [*kinds, "null"]}


_STR, _INT, _NUM, _BOOL = ({"type": t} for t in ("string", "integer", "number", "boolean"))
_TIME = {"type": "number", "description": "epoch seconds"}


def _defs() -> dict[str, Any]:
    diff = _obj(
        {
            "header": _STR,
            "before": _nullable("string"),
            "after": _nullable("string"),
            "items": {"type": "array", "items": {"type": "array", "items": _STR, "minItems": 2, "maxItems": 2}},
            "binary": _BOOL,
            "truncated": _BOOL,
        }
    )
    plan = _obj(
        {
            "change": {"enum": ["will_change", "no_change", "unknown"]},
            "reason": _nullable("string"),
            "diffs": {"type": "array", "items": {"$ref": "#/$defs/diff"}},
            "fingerprint": {},
        }
    )
    result = {
        "step": {**_STR, "description": "the step id (`sources.NAME` for a source)"},
        "host": {**_nullable("string"), "description": "null: ran on the controller"},
        "status": {"enum": _STATUS},
        "message": _nullable("string"),
        "duration": {**_NUM, "description": "seconds"},
        "attempts": _INT,
        "plan": {"oneOf": [{"type": "null"}, {"$ref": "#/$defs/plan"}]},
        "outputs": {"type": "object"},
    }
    message = {"level": _STR, "text": _STR, "host": _nullable("string"), "step": _nullable("string")}
    counts = _obj({s: {"type": "integer", "minimum": 0} for s in _STATUS})
    run = _obj(
        {
            "format_version": {"const": 1},
            "run_id": _STR,
            "playbook": _STR,
            "mode": {"enum": ["plan", "run"]},
            "started": _nullable("string"),
            "finished": _nullable("string"),
            "duration": _nullable("number"),
            "exit_code": {"enum": [0, 1, 2, 130]},
            "aborted": _nullable("string"),
            "interrupted": _BOOL,
            "changes": _INT,
            "failed_hosts": {"type": "array", "items": _STR},
            "steps": {"type": "array", "items": _STR},
            "hosts": {"type": "object", "additionalProperties": {"$ref": "#/$defs/counts"}},
            "results": {
                "type": "array",
                "items": {"$ref": "#/$defs/result"},
                "description": "controller results first, then each host in fleet order; "
                "within each, steps in playbook order",
            },
            "messages": {"type": "array", "items": {"$ref": "#/$defs/message"}},
            "extra": {"type": "object"},
        }
    )
    error = _obj(
        {"message": _STR, "kind": {**_STR, "description": "the error class, e.g. LoadError"}},
        {
            "file": _STR,
            "line": {"type": "integer", "minimum": 1},
            "col": {"type": "integer", "minimum": 1},
            "subject": {**_STR, "description": "what the error is about when it has no location"},
        },
    )
    return {
        "diff": diff,
        "plan": plan,
        "result": _obj(result),
        "result_fields": {"properties": result, "required": sorted(result)},
        "message": _obj(message),
        "counts": counts,
        "run": run,
        "error": error,
        "errors": {"type": "array", "items": {"$ref": "#/$defs/error"}, "minItems": 1},
    }


def _run_schema() -> dict[str, Any]:
    error_doc = _obj({"format_version": {"const": 1}, "exit_code": {"const": 1}, "errors": {"$ref": "#/$defs/errors"}})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": _ID + "run.schema.json",
        "title": "playbook --format json output",
        "description": "A run document, or an error document when the command stopped before a run.",
        "oneOf": [{"$ref": "#/$defs/run"}, {"$ref": "#/$defs/error_document"}],
        "$defs": {**_defs(), "error_document": error_doc},
    }


def _events_schema() -> dict[str, Any]:
    def event(name: str, fields: dict[str, Any], ref: str | None = None) -> dict[str, Any]:
        schema = _obj({"event": {"const": name}, "time": _TIME, **fields})
        return {"allOf": [schema, {"$ref": ref}]} if ref else schema

    events = {
        "run_started": event(
            "run_started",
            {
                "run_id": _STR,
                "playbook": _STR,
                "mode": {"enum": ["plan", "run"]},
                "hosts": {"type": "array", "items": _STR},
                "steps": {"type": "array", "items": _STR},
            },
        ),
        "step_started": event("step_started", {"step": _STR, "host": _nullable("string")}),
        "step_finished": event("step_finished", {}, "#/$defs/result_fields"),
        "host_finished": event("host_finished", {"host": _STR, "status": {"enum": _STATUS}}),
        "message": event(
            "message", {"level": _STR, "text": _STR, "host": _nullable("string"), "step": _nullable("string")}
        ),
        "progress": event(
            "progress",
            {
                "host": _nullable("string"),
                "step": _STR,
                "what": _STR,
                "done": _INT,
                "total": _nullable("integer"),
                "rate": _nullable("number"),
                "eta": _nullable("number"),
            },
        ),
        "budget_exceeded": event(
            "budget_exceeded",
            {"fleet": _STR, "failed": _INT, "hosts": _INT, "max_fail_percentage": _NUM},
        ),
        "run_finished": event("run_finished", {"summary": {"$ref": "#/$defs/run"}}),
        "error": event("error", {"errors": {"$ref": "#/$defs/errors"}}),
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": _ID + "events.schema.json",
        "title": "one line of playbook --format jsonl output",
        "description": "Each line is one event, in the order they happened; `error` ends a command "
        "that stopped before a run.",
        "oneOf": [{"$ref": f"#/$defs/event_{name}"} for name in events],
        "$defs": {**_defs(), **{f"event_{name}": schema for name, schema in events.items()}},
    }


def output_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema of each machine-readable output format."""
    return {"run.schema.json": _run_schema(), "events.schema.json": _events_schema()}
