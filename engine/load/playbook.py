"""Load a playbook: YAML → schema validation → semantic checks → model objects.

Everything wrong with the input is reported before anything runs, located at file:line:col and
worded `path: 'field' must be X (got Y)`. Several problems are raised together as
`ValidationErrors`, sorted by line. Nothing but `PlaybookError`s escapes for bad input.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from engine import templating
from engine.argschema import schema_for
from engine.errors import GraphError, PlaybookError, TemplateError, ValidationError, suggest
from engine.load import validcache
from engine.load.common import find_cycle, is_number, locations, raise_all, read_mapping, walk_strings
from engine.load.schema_errors import display_path, schema_errors
from engine.load.schemas import playbook_schema
from engine.model.config import CONTROLLER, Fleet, Playbook, Source, Step
from engine.module import all_modules, find_module, source_module, source_types

if TYPE_CHECKING:  # imported when first needed: content validated before never needs it (validcache)
    import jsonschema

__all__ = ["load_playbook"]

_FLEET_FIELDS = {f.name for f in dataclasses.fields(Fleet)}


class _PlaybookLoader:
    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.doc = read_mapping(self.path, "playbook")
        self.data: dict[str, Any] = self.doc.data
        self.errors: list[PlaybookError] = []
        self.modules = _LazyModules()
        self.validated = False  # see load()
        self.validators: dict[str, jsonschema.Draft202012Validator] = {}

    def located(self, cls: type[PlaybookError], message: str, path: tuple) -> None:
        self.errors.append(cls(message, location=self.doc.where(path), path=display_path(path)))

    def load(self) -> Playbook:
        marker = self.validation_key()
        self.validated = validcache.known(marker)  # the same data passed the same schemas before
        if not self.validated:
            self.errors.extend(schema_errors(playbook_schema(with_modules=False), self.data, self.doc))
        fleets = self.fleets()
        sources, source_steps = self.sources()
        steps = self.steps(fleets, sources)
        all_steps = source_steps + steps
        self.infer_and_check_needs(all_steps, sources)
        self.check_cycles(all_steps)
        raise_all(self.errors)
        if not self.validated:
            validcache.remember(marker)
        name = self.data.get("name")
        inventory = self.data.get("inventory")
        return Playbook(
            path=self.path,
            name=name if isinstance(name, str) and name else os.path.splitext(os.path.basename(self.path))[0],
            sources=sources,
            fleets=fleets,
            steps=tuple(s["step"] for s in all_steps),
            vars=dict(self.data.get("vars") or {}) if isinstance(self.data.get("vars"), dict) else {},
            secrets={str(k): dict(v) for k, v in (self.data.get("secrets") or {}).items() if isinstance(v, dict)}
            if isinstance(self.data.get("secrets"), dict)
            else {},
            inventory=inventory if isinstance(inventory, str) else None,
            notify=_notify(self.data.get("notify")),
            state=str(self.data.get("state") or ""),
            location=self.doc.where(()),
            vars_locations=self.var_locations(),
        )

    def var_locations(self) -> dict[str, Any]:
        raw = self.data.get("vars")
        found = {str(k): self.doc.key_where(("vars", k)) for k in raw} if isinstance(raw, dict) else {}
        return {k: loc for k, loc in found.items() if loc is not None}

    def fleets(self) -> dict[str, Fleet]:
        raw = self.data.get("fleets")
        out: dict[str, Fleet] = {}
        if not isinstance(raw, dict):
            return out
        for name, spec in raw.items():
            if not isinstance(spec, dict):
                continue
            hosts = spec.get("hosts")
            if isinstance(hosts, list):
                hosts = ",".join(str(h) for h in hosts)
            mfp = spec.get("max_fail_percentage")
            out[name] = Fleet(
                name=name,
                hosts=hosts if isinstance(hosts, str) else "",
                serial=spec.get("serial") if isinstance(spec.get("serial"), (int, str)) else None,
                max_fail_percentage=float(mfp) if isinstance(mfp, (int, float)) and not isinstance(mfp, bool) else None,
                forks=spec.get("forks") if isinstance(spec.get("forks"), int) else None,
                **({"lock": spec["lock"]} if isinstance(spec.get("lock"), bool) and "lock" in _FLEET_FIELDS else {}),
                location=self.doc.key_where(("fleets", name)),
            )
        return out

    def validation_key(self) -> str | None:
        """The name of this playbook's clean-validation marker (engine/load/validcache.py): the data,
        the playbook schema and the argument schemas of every module it names; None when a
        module name is unknown (full validation reports it)."""
        names: set[str] = set()
        steps = self.data.get("steps")
        for step in steps if isinstance(steps, list) else ():
            if not isinstance(step, dict) or not isinstance(step.get("module"), str):
                return None
            names.add(step["module"])
        sources = self.data.get("sources")
        for spec in sources.values() if isinstance(sources, dict) else ():
            kind = spec.get("type") if isinstance(spec, dict) else None
            module = source_module(kind) if isinstance(kind, str) else None
            if module is None:
                return None
            names.add(module)
        schemas: dict[str, Any] = {"": playbook_schema(with_modules=False)}
        for name in sorted(names):
            module = self.modules.get(name)
            if module is None:
                return None
            schemas[name] = schema_for(module.Args, templated=True)
        return validcache.key("playbook", schemas, self.data)

    def check_args(self, module_name: str, args: Any, at: tuple) -> None:
        if self.validated:
            return
        validator = self.validators.get(module_name)
        if validator is None:
            import jsonschema

            schema = schema_for(self.modules[module_name].Args, templated=True)
            validator = self.validators[module_name] = jsonschema.Draft202012Validator(schema)
        self.errors.extend(schema_errors(validator, args, self.doc, base=at, noun="argument"))

    def sources(self) -> tuple[dict[str, Source], list[dict[str, Any]]]:
        raw = self.data.get("sources")
        sources: dict[str, Source] = {}
        steps: list[dict[str, Any]] = []
        if not isinstance(raw, dict):
            return sources, steps
        for name, spec in raw.items():
            if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
                continue
            at = ("sources", name)
            kind = spec["type"]
            module = source_module(kind)
            if module is None:
                self.located(
                    ValidationError, f"unknown source type '{kind}'{suggest(kind, source_types())}", at + ("type",)
                )
                continue
            args = {k: v for k, v in spec.items() if k != "type"}
            self.check_args(module, args, at)
            location = self.doc.key_where(at)
            sources[name] = Source(name=name, type=kind, module=module, args=args, location=location)
            arg_locs = locations(self.doc, at, args)
            step = Step(
                id=f"sources.{name}",
                module=module,
                fleet=CONTROLLER,
                args=args,
                description=f"source {name} ({kind})",
                location=location,
                args_locations=arg_locs,
            )
            steps.append({"step": step, "at": at, "args_at": at, "needs": [], "when_at": None})
        return sources, steps

    def steps(self, fleets: Mapping[str, Fleet], sources: Mapping[str, Source]) -> list[dict[str, Any]]:
        raw = self.data.get("steps")
        out: list[dict[str, Any]] = []
        if not isinstance(raw, list):
            return out
        first_seen: dict[str, int] = {}
        for i, spec in enumerate(raw):
            at = ("steps", i)
            if (
                not isinstance(spec, dict)
                or not isinstance(spec.get("id"), str)
                or not isinstance(spec.get("module"), str)
            ):
                continue
            step_id, module_name = spec["id"], spec["module"]
            ok = True
            if step_id in first_seen:
                line = first_seen[step_id]
                self.located(ValidationError, f"duplicate step id '{step_id}' (first at line {line})", at + ("id",))
                ok = False
            else:
                loc = self.doc.where(at + ("id",))
                first_seen[step_id] = loc.line if loc else 0
            module = self.modules.get(module_name)
            if module is None:
                self.located(
                    ValidationError,
                    f"unknown module '{module_name}'{suggest(module_name, self.modules)}",
                    at + ("module",),
                )
                continue
            fleet = spec.get("fleet")
            if fleet is None:
                if module.controller_only:
                    fleet = CONTROLLER
                else:
                    self.located(
                        ValidationError,
                        f"missing 'fleet': module '{module_name}' runs on hosts; name a fleet"
                        + (f" ({', '.join(repr(f) for f in fleets)})" if fleets else "")
                        + " or 'controller'",
                        at,
                    )
                    ok = False
            elif not isinstance(fleet, str):
                ok = False
            elif fleet != CONTROLLER and fleet not in fleets:
                self.located(
                    ValidationError, f"unknown fleet '{fleet}'{suggest(fleet, [*fleets, CONTROLLER])}", at + ("fleet",)
                )
                ok = False
            elif fleet != CONTROLLER and module.controller_only:
                self.located(
                    ValidationError,
                    f"module '{module_name}' runs only on the controller (got fleet '{fleet}'): use fleet 'controller' or omit it",
                    at + ("fleet",),
                )
                ok = False
            args = spec.get("args")
            args = {} if args is None else args
            if not isinstance(args, dict):
                continue  # the structural check reported it
            self.check_args(module_name, args, at + ("args",))
            if not ok:
                continue
            assert isinstance(fleet, str)  # a missing or non-string fleet cleared `ok` above
            raw_needs = spec.get("needs")
            needs = raw_needs if isinstance(raw_needs, list) else []
            when = spec.get("when") if isinstance(spec.get("when"), str) else None
            timeout = spec.get("timeout")
            retry_delay = spec.get("retry_delay")
            description = spec.get("description")
            step = Step(
                id=step_id,
                module=module_name,
                fleet=fleet,
                args=args,
                needs=tuple(n for n in needs if isinstance(n, str)),
                timeout=float(timeout) if is_number(timeout) else None,
                retries=spec["retries"]
                if isinstance(spec.get("retries"), int) and not isinstance(spec.get("retries"), bool)
                else 0,
                retry_delay=float(retry_delay) if is_number(retry_delay) else 1.0,
                when=when,
                description=description if isinstance(description, str) else "",
                location=self.doc.where(at),
                args_locations=locations(self.doc, at + ("args",), args),
            )
            out.append({"step": step, "at": at, "args_at": at + ("args",), "needs": needs, "when_at": at + ("when",)})
        return out

    def infer_and_check_needs(self, entries: list[dict[str, Any]], sources: Mapping[str, Source]) -> None:
        ids = [e["step"].id for e in entries]
        known = set(ids)
        for entry in entries:
            step: Step = entry["step"]
            at = entry["at"]
            needs: list[str] = []
            for j, need in enumerate(entry["needs"]):
                if not isinstance(need, str):
                    continue
                if need not in known:
                    what = "source" if need.startswith("sources.") else "step"
                    hint = f" (did you mean 'sources.{need}'?)" if f"sources.{need}" in known else suggest(need, ids)
                    self.located(GraphError, f"needs unknown {what} '{need}'{hint}", at + ("needs", j))
                elif need not in needs:
                    needs.append(need)
            templates = [(entry["args_at"] + rel, text) for rel, text in walk_strings(dict(step.args))]
            if step.when is not None and entry["when_at"] is not None:
                expr = step.when if templating.is_template(step.when) else "{{ " + step.when + " }}"
                templates.append((entry["when_at"], expr))
            for where, text in templates:
                if not templating.is_template(text):
                    continue
                try:
                    refs = templating.references(text)
                except TemplateError as exc:
                    self.located(TemplateError, exc.message, where)
                    continue
                for namespace, name, _attr in sorted(refs, key=lambda r: (r[0], r[1], r[2] or "")):
                    target = name if namespace == "steps" else f"sources.{name}"
                    if target not in known:
                        pool = ids if namespace == "steps" else [f"sources.{s}" for s in sources]
                        hint = suggest(target, pool)
                        self.located(GraphError, f"template refers to unknown {namespace[:-1]} '{name}'{hint}", where)
                    elif target not in needs:
                        needs.append(target)
            entry["step"] = dataclasses.replace(step, needs=tuple(needs))

    def check_cycles(self, entries: list[dict[str, Any]]) -> None:
        order = {e["step"].id: i for i, e in enumerate(entries)}
        cycle = find_cycle({e["step"].id: e["step"].needs for e in entries})  # edge: step -> what it needs
        if not cycle:
            return
        start = min(range(len(cycle)), key=lambda i: order[cycle[i]])
        cycle = cycle[start:] + cycle[:start]
        first = entries[order[cycle[0]]]
        text = " -> ".join(cycle + [cycle[0]])
        self.located(GraphError, f"steps need each other in a cycle: {text}", first["at"])


class _LazyModules:
    """The module registry as the loader reads it: one module imported per name asked for; all of
    them only when a name is unknown (to suggest the closest)."""

    def get(self, name: str) -> Any:
        return find_module(name) if isinstance(name, str) else None

    def __getitem__(self, name: str) -> Any:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(all_modules())


def _notify(raw: Any) -> tuple[dict[str, Any], ...]:
    return tuple(dict(n) for n in raw if isinstance(n, dict)) if isinstance(raw, list) else ()


def load_playbook(path: str) -> Playbook:
    """Load, validate and check a playbook file; see docs/playbook-format.md.

    Source entries become controller steps `sources.<name>` placed first; references to
    `steps.X` / `sources.X` in argument templates are added to `needs`.
    """
    return _PlaybookLoader(path).load()


# --- inventory ------------------------------------------------------------------------------
