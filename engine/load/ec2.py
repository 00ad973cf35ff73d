"""Dynamic inventory: EC2 instances found by tags become hosts, grouped by their tags.

Declared in the inventory file under `dynamic:` (docs/inventory-cli.md#dynamic-inventory) and
merged by `engine.load.inventory.load_inventory` into the static hosts and groups:

- a dynamic host named in a static group's `hosts` list joins that group;
- a static group named like a dynamic one (`role_web`) gets the dynamic hosts added;
- a static group may list a dynamic group as a child (`children: [role_web]`);
- a host also written under `hosts:` keeps what the file sets there (address, port, vars ...)
  over what the source says.

Instances are fetched once per process (a run) and, with `cache_ttl`, kept on disk under the
state dir. boto3 and botocore errors are translated here into `DynamicInventoryError`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from engine.errors import DynamicInventoryError, Location, TemplateError
from engine.model import jsonable
from engine.model.config import Group, Host, Inventory

__all__ = [
    "DynamicInventoryError",
    "dynamic_sources",
    "dynamic_group_matcher",
    "fetch_ec2_instances",
    "ec2_inventory",
    "merge_dynamic",
    "clear_cache",
]

_CONNECTION_KEYS = ("connection", "user", "port", "key", "known_hosts", "kubeconfig", "context", "namespace")
_PATH_KEYS = ("key", "known_hosts", "kubeconfig")
_ADDRESS = {
    "private_ip": "PrivateIpAddress",
    "public_ip": "PublicIpAddress",
    "private_dns": "PrivateDnsName",
    "public_dns": "PublicDnsName",
    "instance_id": "InstanceId",
}

_cache: dict[str, list[dict[str, Any]]] = {}
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Forget the instances fetched by this process (the next load queries AWS again)."""
    with _cache_lock:
        _cache.clear()


def dynamic_sources(raw: Any) -> list[tuple[str, dict[str, Any], tuple]]:
    """The well-formed entries of an inventory's `dynamic:` list as (kind, config, yaml path);
    malformed ones are left to the schema's errors."""
    out = []
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        if isinstance(item, dict) and len(item) == 1:
            ((kind, config),) = item.items()
            if kind == "aws_ec2" and isinstance(config, dict):
                out.append((kind, config, ("dynamic", i, kind)))
    return out


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text.strip())
    return "_" + name if name[:1] in (".", "-") else name


def _is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def dynamic_group_matcher(sources: Sequence[tuple[str, dict[str, Any], tuple]]) -> Callable[[str], bool]:
    """A test for group names a source may create (`role_*` for `group_by_tags: [role]`; any
    name when a group is a template), so static `children:` may name them before they exist."""
    prefixes: list[str] = []
    anything = False
    for _kind, config, _path in sources:
        for entry in config.get("group_by_tags") or []:
            if not isinstance(entry, str):
                continue
            if _is_template(entry):
                anything = True
            else:
                prefixes.append(_safe_name(entry) + "_")
    return lambda name: anything or any(name.startswith(p) and len(name) > len(p) for p in prefixes)


# --- fetching --------------------------------------------------------------------------------


def _filters(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = dict(config.get("filters") or {})
    raw.setdefault("instance-state-name", "running")
    out = []
    for name, value in raw.items():
        values = value if isinstance(value, list) else [value]
        out.append({"Name": str(name), "Values": [_filter_text(v) for v in values]})
    return out


def _filter_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _jsonable(instance: Mapping[str, Any]) -> dict[str, Any]:
    keep = (
        "InstanceId",
        "PrivateIpAddress",
        "PublicIpAddress",
        "PrivateDnsName",
        "PublicDnsName",
        "InstanceType",
        "ImageId",
        "VpcId",
        "SubnetId",
        "Tags",
        "LaunchTime",
    )
    out = {k: instance.get(k) for k in keep if instance.get(k) is not None}
    launched = out.get("LaunchTime")
    if isinstance(launched, datetime.datetime):
        out["LaunchTime"] = launched.isoformat()
    out["State"] = (instance.get("State") or {}).get("Name")
    out["AvailabilityZone"] = (instance.get("Placement") or {}).get("AvailabilityZone")
    return out


def fetch_ec2_instances(config: Mapping[str, Any], *, where: str = "aws_ec2") -> list[dict[str, Any]]:
    """Every instance matching the source's filters in its regions, as plain dicts with a
    `Region` key; botocore errors become `DynamicInventoryError`."""
    import boto3
    import botocore.exceptions as bx

    instances: list[dict[str, Any]] = []
    try:
        session = boto3.session.Session(profile_name=config.get("profile"))
        for region in config.get("regions") or []:
            client = session.client("ec2", region_name=region, endpoint_url=config.get("endpoint_url") or None)
            for page in client.get_paginator("describe_instances").paginate(Filters=_filters(config)):
                for reservation in page.get("Reservations", []):
                    for inst in reservation.get("Instances", []):
                        item = _jsonable(inst)
                        item["Region"] = region
                        instances.append(item)
    except bx.NoCredentialsError:
        raise DynamicInventoryError(
            "no AWS credentials found (set AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or `profile:`)",
            path=where,
        ) from None
    except bx.ProfileNotFound as exc:
        raise DynamicInventoryError(f"AWS profile not found: {exc}", path=where) from None
    except bx.ClientError as exc:
        err = exc.response.get("Error", {})
        raise DynamicInventoryError(
            f"EC2 refused DescribeInstances: {err.get('Code', 'error')}: {err.get('Message', '')}".rstrip(": "),
            path=where,
        ) from None
    except bx.EndpointConnectionError as exc:
        raise DynamicInventoryError(f"cannot reach EC2: {exc}", path=where) from None
    except (bx.BotoCoreError, ValueError) as exc:
        raise DynamicInventoryError(f"EC2 query failed: {exc}", path=where) from None
    return instances


def _state_dir() -> str:
    return os.environ.get("PLAYBOOK_STATE_DIR", ".playbook")


def _cached_instances(config: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """Instances for one source: from this process's cache, else the on-disk cache within
    `cache_ttl`, else EC2."""
    key = hashlib.sha256(
        json.dumps(
            {k: config.get(k) for k in ("regions", "filters", "profile", "endpoint_url")}, sort_keys=True, default=str
        ).encode()
    ).hexdigest()
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        ttl = config.get("cache_ttl") or 0
        disk = os.path.join(_state_dir(), "inventory-cache", f"aws_ec2-{key[:32]}.json")
        if ttl > 0:
            try:
                with open(disk, encoding="utf-8") as fh:
                    saved = jsonable.loads(fh.read())
                if time.time() - float(saved["fetched"]) < ttl:
                    _cache[key] = saved["instances"]
                    return _cache[key]
            except (OSError, ValueError, KeyError, TypeError):
                pass  # no cache, an old format or a torn write: fetch again
        instances = fetch_ec2_instances(config, where=where)
        _cache[key] = instances
        if ttl > 0:
            try:
                os.makedirs(os.path.dirname(disk), exist_ok=True)
                tmp = f"{disk}.{os.getpid()}.tmp"
                with open(tmp, "w", encoding="utf-8") as fh:
                    json.dump({"fetched": time.time(), "instances": instances}, fh)
                os.replace(tmp, disk)
            except OSError:
                pass  # a cache is an optimisation; an unwritable state dir must not fail the run
        return instances


# --- instances → hosts and groups -----------------------------------------------------------


def _context(inst: Mapping[str, Any]) -> dict[str, Any]:
    tags = {t.get("Key"): t.get("Value", "") for t in inst.get("Tags") or [] if t.get("Key")}
    return {
        "tags": tags,
        "instance_id": inst.get("InstanceId"),
        "private_ip": inst.get("PrivateIpAddress"),
        "public_ip": inst.get("PublicIpAddress"),
        "private_dns": inst.get("PrivateDnsName"),
        "public_dns": inst.get("PublicDnsName"),
        "region": inst.get("Region"),
        "availability_zone": inst.get("AvailabilityZone"),
        "instance_type": inst.get("InstanceType"),
        "image_id": inst.get("ImageId"),
        "vpc_id": inst.get("VpcId"),
        "subnet_id": inst.get("SubnetId"),
        "state": inst.get("State"),
        "launch_time": inst.get("LaunchTime"),
    }


def _render(template: str, ctx: Mapping[str, Any]) -> str | None:
    """A name template over instance data; None when it reads a missing tag or renders empty.
    The instance data is only ever a value here, never a template itself."""
    from engine import templating

    try:
        value = templating.render(template, ctx)
    except TemplateError:
        return None
    text = "" if value is None else str(value).strip()
    return text or None


def _resolve(value: Any, base_dir: str) -> Any:
    if not isinstance(value, str):
        return value
    value = os.path.expanduser(value)
    return os.path.normpath(value if os.path.isabs(value) else os.path.join(base_dir, value))


def ec2_inventory(
    config: Mapping[str, Any],
    instances: Sequence[Mapping[str, Any]],
    *,
    file_defaults: Mapping[str, Any],
    base_dir: str,
    where: str = "aws_ec2",
    location: Location | None = None,
) -> tuple[dict[str, Host], dict[str, list[str]]]:
    """Hosts (by name, sorted) and group → member names for one source's instances."""
    settings = dict(file_defaults)
    for k, v in (config.get("defaults") or {}).items():
        settings[k] = _resolve(v, base_dir) if k in _PATH_KEYS else v
    address_key = config.get("address") or "private_ip"
    name_template = config.get("name")
    hosts: dict[str, Host] = {}
    ids: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    for inst in instances:
        ctx = _context(inst)
        iid = str(ctx["instance_id"])
        name = _safe_name(_render(name_template, ctx) or iid) if name_template else iid
        if name in hosts:
            raise DynamicInventoryError(
                f"instances {ids[name]} and {iid} would both be host '{name}'; make `name` unique "
                "(e.g. add `-{{ instance_id }}`) or filter one out",
                location=location,
                path=where,
            )
        if address_key.startswith("tag:"):
            address = ctx["tags"].get(address_key[4:])
        else:
            address = inst.get(_ADDRESS[address_key])
        if not address:
            raise DynamicInventoryError(
                f"instance {iid} ('{name}') has no {address_key}; filter it out or choose another `address`",
                location=location,
                path=where,
            )
        host_groups: list[str] = []
        for entry in config.get("group_by_tags") or []:
            if _is_template(entry):
                rendered = _render(entry, ctx)
                gname = _safe_name(rendered) if rendered else None
            else:
                value = ctx["tags"].get(entry)
                gname = _safe_name(f"{entry}_{value}") if value else None
            if gname and gname != "all" and gname not in host_groups:
                host_groups.append(gname)
                groups.setdefault(gname, []).append(name)
        facts = {k: v for k, v in ctx.items() if v is not None}
        hosts[name] = Host(
            name=name,
            connection=settings.get("connection") or "ssh",
            address=str(address),
            port=settings.get("port") or 22,
            user=settings.get("user"),
            key=settings.get("key"),
            known_hosts=settings.get("known_hosts"),
            kubeconfig=settings.get("kubeconfig"),
            context=settings.get("context"),
            namespace=settings.get("namespace"),
            vars={**dict(config.get("vars") or {}), "ec2": facts},
            groups=tuple(host_groups),
            location=location,
        )
        ids[name] = iid
    ordered = dict(sorted(hosts.items()))
    return ordered, {g: sorted(m) for g, m in sorted(groups.items())}


def merge_dynamic(
    inventory: Inventory,
    sources: Sequence[tuple[str, dict[str, Any], tuple]],
    *,
    doc: Any,
    explicit_hosts: Mapping[str, Any],
) -> Inventory:
    """The static inventory with every source's hosts and groups merged in (module docstring)."""
    from engine.load.schema_errors import display_path

    base_dir = os.path.dirname(os.path.abspath(inventory.path))
    hosts = dict(inventory.hosts)
    groups = {name: g for name, g in inventory.groups.items()}
    added: dict[str, str] = {}  # host -> the source that made it
    extra_members: dict[str, list[str]] = {}
    for _kind, config, path in sources:
        where = display_path(path)
        location = doc.key_where(path) if doc is not None else None
        instances = _cached_instances(config, where)
        dyn_hosts, dyn_groups = ec2_inventory(
            config, instances, file_defaults=inventory.defaults, base_dir=base_dir, where=where, location=location
        )
        for name, dyn in dyn_hosts.items():
            if name in added:
                raise DynamicInventoryError(
                    f"host '{name}' comes from both {added[name]} and {where}", location=location, path=where
                )
            added[name] = where
            static = hosts.get(name)
            if static is None:
                hosts[name] = dyn
                continue
            spec = explicit_hosts.get(name)
            spec = spec if isinstance(spec, dict) else {}
            own = {k: getattr(static, k) for k in ("address", *_CONNECTION_KEYS) if k in spec}
            hosts[name] = dataclasses.replace(
                dyn,
                **own,
                vars={**dyn.vars, **static.vars},
                groups=tuple(dict.fromkeys(static.groups + dyn.groups)),
                location=static.location if name in explicit_hosts else dyn.location,
            )
        for gname, members in dyn_groups.items():
            extra_members.setdefault(gname, []).extend(members)
    for gname, members in extra_members.items():
        g = groups.get(gname)
        if g is None:
            groups[gname] = Group(name=gname, hosts=tuple(members))
        else:
            groups[gname] = dataclasses.replace(g, hosts=tuple(dict.fromkeys(g.hosts + tuple(members))))
    return dataclasses.replace(inventory, hosts=hosts, groups=groups)
