"""The JSON Schemas of a playbook and an inventory, generated from code.

`schemas/playbook.schema.json` and `schemas/inventory.schema.json` are written from here
(`python -m engine.load.schemas`) and a test checks they are in sync. The playbook schema carries, for
every registered module, an `if module == X then args: <X's argument schema>` clause (and the
same for source types), so editors complete module arguments; module argument schemas come from
each module's `Args` dataclass through `engine.argschema`, never written by hand.

The loader validates the structure with `playbook_schema(with_modules=False)` and checks each
step's arguments against its module's schema itself, so that it can word those errors per step.

Over 400 lines as one idea: most of it is the playbook and inventory schemas written out as data.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from engine.argschema import schema_for
from engine.module import all_modules, source_module, source_types

__all__ = [
    "DRAFT",
    "IDENTIFIER",
    "HOST_NAME",
    "PERCENT",
    "playbook_schema",
    "inventory_schema",
    "source_args_schema",
    "rendered_schemas",
    "write_schemas",
]

DRAFT = "https://json-schema.org/draft/2020-12/schema"
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
FLEET_NAME = r"^[A-Za-z_][A-Za-z0-9_-]*$"
HOST_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
PERCENT = r"^([1-9][0-9]?|100)%$"

PATTERN_TEXT = {
    IDENTIFIER: "an identifier (letters, digits and '_', not starting with a digit)",
    FLEET_NAME: "a name of letters, digits, '_' and '-', not starting with a digit or '-'",
    HOST_NAME: "a name of letters, digits, '.', '_' and '-' (no spaces, ',' or ':')",
    PERCENT: "a percentage from 1% to 100%",
    r"\{\{|\{%": "a template",
}
"""How error messages describe each pattern used in the schemas."""


def _vars(description: str) -> dict[str, Any]:
    return {"type": "object", "description": description}


def _fleet() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Where steps run (a host pattern) and the rollout policy.",
        "properties": {
            "hosts": {
                "description": "A host pattern (`web:!web07`, `web:&canary`, `db*`), or a list of terms united.",
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                ],
            },
            "serial": {
                "description": "Rolling batches: a host count, or a percentage of the fleet (`25%`).",
                "anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": PERCENT}],
            },
            "max_fail_percentage": {
                "description": "Stop the rollout when more than this percentage of the fleet's hosts failed.",
                "type": "number",
                "minimum": 0,
                "maximum": 100,
            },
            "forks": {
                "description": "At most this many of the fleet's hosts at once.",
                "type": "integer",
                "minimum": 1,
            },
            "lock": {
                "description": "Take the fleet's deploy lock on every host for the length of a run.",
                "type": "boolean",
                "default": True,
            },
            "description": {"type": "string"},
        },
        "required": ["hosts"],
        "additionalProperties": False,
    }


def _step(with_modules: bool) -> dict[str, Any]:
    modules = all_modules() if with_modules else {}
    module: dict[str, Any] = {"type": "string", "description": "The module this step calls (`playbook modules`)."}
    if modules:
        module["enum"] = list(modules)
    schema: dict[str, Any] = {
        "type": "object",
        "description": "One call of a module on a fleet or on the controller.",
        "properties": {
            "id": {
                "type": "string",
                "pattern": IDENTIFIER,
                "description": "Unique step id, used in `needs:` and `steps.<id>`.",
            },
            "module": module,
            "fleet": {
                "type": "string",
                "minLength": 1,
                "description": "A fleet name, or `controller`; may be omitted for controller-only modules.",
            },
            "args": {"type": "object", "description": "The module's arguments; strings are templates."},
            "needs": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "uniqueItems": True,
                "description": "Step ids (and `sources.<name>`) this step waits for.",
            },
            "timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "Seconds per host before the step fails.",
            },
            "retries": {"type": "integer", "minimum": 0, "description": "Retries after a failure.", "default": 0},
            "retry_delay": {"type": "number", "minimum": 0, "description": "Seconds between retries.", "default": 1},
            "when": {"type": "string", "description": "Run only when this expression (or template) is true."},
            "description": {"type": "string", "description": "What the step is for (shown in plans)."},
        },
        "required": ["id", "module"],
        "additionalProperties": False,
    }
    if modules:
        schema["allOf"] = [
            {
                "if": {"properties": {"module": {"const": name}}, "required": ["module"]},
                "then": {"properties": {"args": schema_for(mod.Args, templated=True)}},
            }
            for name, mod in modules.items()
        ]
    return schema


def source_args_schema(source_type: str) -> dict[str, Any] | None:
    """A source's schema for one type: its module's arguments plus `type`, or None if unknown."""
    name = source_module(source_type)
    if name is None:
        return None
    schema = schema_for(all_modules()[name].Args, templated=True)
    schema["properties"] = {"type": {"const": source_type}, **schema["properties"]}
    return schema


def _source(with_modules: bool) -> dict[str, Any]:
    types = source_types() if with_modules else []
    type_schema: dict[str, Any] = {
        "type": "string",
        "description": "The source type (`local`, `git`, `s3`, `npm`, ...).",
    }
    if types:
        type_schema["enum"] = types
    schema: dict[str, Any] = {
        "type": "object",
        "description": "An artifact the deploy needs; all keys but `type` are arguments of the type's module.",
        "properties": {"type": type_schema},
        "required": ["type"],
    }
    if types:
        schema["allOf"] = [
            {"if": {"properties": {"type": {"const": t}}, "required": ["type"]}, "then": source_args_schema(t)}
            for t in types
        ]
    return schema


def playbook_schema(*, with_modules: bool = True) -> dict[str, Any]:
    """The playbook JSON Schema. With `with_modules`, module/source-type names are enumerated and
    each one's arguments are described (the form written to `schemas/`)."""
    return {
        "$schema": DRAFT,
        "$id": "playbook.schema.json",
        "title": "playbook",
        "description": "A playbook: sources, fleets and steps (docs/playbook-format.md).",
        "type": "object",
        "properties": {
            "name": {
                "type": "string",
                "minLength": 1,
                "description": "The playbook's name; default: the file name without extension.",
            },
            "inventory": {
                "type": "string",
                "minLength": 1,
                "description": "Default inventory file, relative to this file.",
            },
            "vars": _vars("Playbook defaults for vars (lowest precedence)."),
            "secrets": {
                "type": "object",
                "description": "Vars whose values are secret: read at run time from an environment variable or a "
                "file, never written to any output (docs/secrets.md).",
                "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "env": {
                            "type": "string",
                            "minLength": 1,
                            "description": "Environment variable holding the value.",
                        },
                        "file": {
                            "type": "string",
                            "minLength": 1,
                            "description": "File holding the value (trailing newline stripped), relative to the playbook.",
                        },
                    },
                    "additionalProperties": False,
                    "minProperties": 1,
                    "maxProperties": 1,
                },
            },
            "sources": {
                "type": "object",
                "description": "Artifacts the deploy needs, by name (`sources.<name>.path` in templates).",
                "propertyNames": {"pattern": IDENTIFIER},
                "additionalProperties": {"$ref": "#/$defs/source"},
            },
            "fleets": {
                "type": "object",
                "description": "Named host sets with rollout policy.",
                "propertyNames": {"pattern": FLEET_NAME, "not": {"const": "controller"}},
                "additionalProperties": {"$ref": "#/$defs/fleet"},
            },
            "steps": {
                "type": "array",
                "description": "The steps, in default order.",
                "items": {"$ref": "#/$defs/step"},
            },
            "notify": _notify("this playbook"),
            "state": _state("this playbook's runs"),
        },
        "patternProperties": {"^x-": {"description": "Ignored: a place for YAML anchors (`x-common: &common`)."}},
        "required": ["steps"],
        "additionalProperties": False,
        "$defs": {"source": _source(with_modules), "fleet": _fleet(), "step": _step(with_modules)},
    }


def _state(whose: str) -> dict[str, Any]:
    """`state:`: where locks, history and journals live (engine/record/state/, docs/scale.md)."""
    return {
        "type": "string",
        "pattern": r"^(local|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^?#]*)?(\?[^#]*)?)$",
        "description": f"Where {whose} keep deploy locks, history, journals and the failure budget: "
        "`local` (the default: --state-dir and lock directories on the hosts) or "
        "`s3://bucket/prefix[?endpoint_url=URL&region=R]`, shared by the shards of a run "
        "(docs/scale.md). `--state` and `$PLAYBOOK_STATE` override it.",
        "examples": ["s3://acme-deploy-state/smartweb"],
    }


#: what `notify:` targets may subscribe to (docs/notifications.md)
NOTIFY_EVENTS = ("started", "step_failed", "budget_exceeded", "finished", "rolled_back")


def _notify(where: str) -> dict[str, Any]:
    """`notify:`: webhooks told about a run (engine/report/notify.py)."""
    return {
        "type": "array",
        "description": f"Webhooks to tell about runs of {where} (docs/notifications.md).",
        "items": {
            "type": "object",
            "properties": {
                "url": {
                    "type": "string",
                    "minLength": 1,
                    "description": "http(s) URL to POST to; a template over playbook vars, -e and secrets "
                    '(a Slack webhook URL is a secret: `url: "{{ slack_webhook }}"`).',
                },
                "format": {
                    "enum": ["json", "slack"],
                    "default": "json",
                    "description": '`json`: the generic payload; `slack`: `{"text": ...}` for Slack-compatible webhooks.',
                },
                "events": {
                    "type": "array",
                    "items": {"enum": list(NOTIFY_EVENTS)},
                    "uniqueItems": True,
                    "minItems": 1,
                    "description": "Which events to send (default: all).",
                },
                "timeout": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": 60,
                    "default": 5,
                    "description": "Seconds per attempt; also the most the end of the run waits for pending ones.",
                },
                "retries": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 5,
                    "default": 2,
                    "description": "Attempts after a failed one (connection error, timeout, a 5xx or 429 answer).",
                },
            },
            "required": ["url"],
            "additionalProperties": False,
        },
    }


def _dynamic(connection: dict[str, Any]) -> dict[str, Any]:
    """Dynamic inventory sources (docs/inventory-cli.md#dynamic-inventory); one key per item."""
    aws_ec2 = {
        "type": "object",
        "description": "EC2 instances, found by filters (usually tags), as hosts grouped by tags.",
        "properties": {
            "regions": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "uniqueItems": True,
                "description": "AWS regions to search.",
            },
            "filters": {
                "type": "object",
                "description": "EC2 DescribeInstances filters, e.g. `tag:role: web`; "
                "a value may be a list. Default adds `instance-state-name: running`.",
            },
            "group_by_tags": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "uniqueItems": True,
                "description": "A tag key `role` makes groups `role_<value>`; a template "
                "(`{{ tags.env }}_{{ tags.role }}`) names a group directly.",
            },
            "address": {
                "type": "string",
                "pattern": "^(private_ip|public_ip|private_dns|public_dns|instance_id|tag:.+)$",
                "description": "What to connect to: private_ip (default), public_ip, private_dns, public_dns, "
                "instance_id or tag:KEY.",
            },
            "name": {
                "type": "string",
                "minLength": 1,
                "description": "Template for host names (default: the instance id), e.g. `{{ tags.Name }}`.",
            },
            "profile": {"type": "string", "minLength": 1, "description": "AWS profile (default: the standard chain)."},
            "endpoint_url": {
                "type": ["string", "null"],
                "description": "EC2 endpoint override (tests, private endpoints).",
            },
            "defaults": {
                "type": "object",
                "properties": connection,
                "additionalProperties": False,
                "description": "Connection settings for these hosts, over the file's `defaults`.",
            },
            "vars": _vars("Vars of these hosts (host level)."),
            "cache_ttl": {
                "type": "integer",
                "minimum": 0,
                "default": 0,
                "description": "Seconds to reuse the instances from an on-disk cache in the state dir (0: only within one run).",
            },
        },
        "required": ["regions"],
        "additionalProperties": False,
    }
    return {
        "type": "array",
        "description": "Dynamic inventory sources merged with the static hosts and groups.",
        "items": {
            "type": "object",
            "properties": {"aws_ec2": aws_ec2},
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 1,
        },
    }


def inventory_schema() -> dict[str, Any]:
    """The inventory JSON Schema (docs/inventory.md)."""
    connection = {
        "connection": {
            "enum": ["ssh", "local", "kubernetes"],
            "description": "How to reach the host: `ssh` (default), `local`, or `kubernetes` (a cluster namespace; "
            "its steps run on the controller against the cluster's API).",
        },
        "kubeconfig": {
            "type": "string",
            "minLength": 1,
            "description": "kubernetes: kubeconfig file, relative to the inventory (default: $KUBECONFIG or ~/.kube/config).",
        },
        "context": {
            "type": "string",
            "minLength": 1,
            "description": "kubernetes: kubeconfig context (default: its current context).",
        },
        "namespace": {
            "type": "string",
            "minLength": 1,
            "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
            "description": "kubernetes: namespace (default: the context's, else `default`).",
        },
        "user": {"type": "string", "minLength": 1, "description": "SSH user."},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "SSH port.", "default": 22},
        "key": {
            "type": "string",
            "minLength": 1,
            "description": "Private key file, relative to the inventory; `~` expanded.",
        },
        "known_hosts": {
            "type": "string",
            "minLength": 1,
            "description": "known_hosts file used for strict host key checking, relative to the inventory.",
        },
    }
    # hosts and groups are inlined (no $ref) and nullable by type (no anyOf): validating a
    # 200-host inventory is twice as fast that way
    host = {
        "type": ["object", "null"],
        "description": "One host; unset connection settings come from `defaults`.",
        "properties": {
            "address": {
                "type": "string",
                "minLength": 1,
                "description": "Address or DNS name; default: the host name.",
            },
            **connection,
            "vars": _vars("Host vars (highest inventory precedence)."),
        },
        "additionalProperties": False,
    }
    group = {
        "type": ["object", "null"],
        "description": "A named set of hosts; children are groups whose hosts belong here too.",
        "properties": {
            "hosts": {"type": "array", "items": {"type": "string", "pattern": HOST_NAME}, "uniqueItems": True},
            "children": {"type": "array", "items": {"type": "string", "pattern": HOST_NAME}, "uniqueItems": True},
            "vars": _vars("Group vars."),
        },
        "additionalProperties": False,
    }
    return {
        "$schema": DRAFT,
        "$id": "inventory.schema.json",
        "title": "playbook inventory",
        "description": "Hosts, groups, vars and connection settings (docs/inventory.md).",
        "type": "object",
        "properties": {
            "defaults": {
                "type": "object",
                "description": "Connection settings for every host that does not set its own.",
                "properties": connection,
                "additionalProperties": False,
            },
            "vars": _vars("Vars of the implicit group `all`."),
            "hosts": {
                "type": "object",
                "propertyNames": {"pattern": HOST_NAME},
                "additionalProperties": host,
            },
            "groups": {
                "type": "object",
                "propertyNames": {"pattern": HOST_NAME, "not": {"const": "all"}},
                "additionalProperties": group,
            },
            "dynamic": _dynamic(connection),
            "notify": _notify("every playbook run against this inventory"),
            "state": _state("every playbook run against this inventory (a playbook's `state:` wins)"),
        },
        "additionalProperties": False,
    }


def _dump(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def rendered_schemas() -> dict[str, str]:
    """File name -> text of each schema file, as `write_schemas` writes them."""
    from engine.report.output_schema import output_schemas

    return {
        "playbook.schema.json": _dump(playbook_schema()),
        "inventory.schema.json": _dump(inventory_schema()),
        **{name: _dump(schema) for name, schema in output_schemas().items()},
    }


def write_schemas(dir: str = "schemas") -> list[str]:
    """Write every schema file into `dir`; returns the paths written."""
    os.makedirs(dir, exist_ok=True)
    written = []
    for name, text in rendered_schemas().items():
        path = os.path.join(dir, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_schemas(sys.argv[1] if len(sys.argv) > 1 else "schemas"):
        print(p)
