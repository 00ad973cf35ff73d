"""One Args dataclass → JSON Schema, and strict conversion of rendered arguments."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema
import pytest

from engine.argschema import TEMPLATE_SCHEMA, build, schema_for
from engine.errors import ArgError
from engine.module import arg


@dataclass(frozen=True)
class Auth:
    user: str = arg(doc="User.")
    token: str | None = arg(None, doc="Token.", secret=True)


@dataclass(frozen=True)
class Args:
    dest: str = arg(doc="Destination.")
    port: int = arg(22, doc="Port.")
    delete: bool = arg(False, doc="Delete extra files.")
    ratio: float = arg(0.5, doc="Ratio.")
    mode: Literal["copy", "link"] = arg("copy", doc="Mode.")
    excludes: tuple[str, ...] = arg((), doc="Excludes.")
    codes: list[int] = arg(default_factory=list, doc="Codes.")
    env: dict[str, str] = arg(default_factory=dict, doc="Env.")
    timeout: float | None = arg(None, doc="Timeout.")
    extra: Any = arg(None, doc="Anything.")
    auth: Auth | None = arg(None, doc="Auth.")
    pair: tuple[str, int] | None = arg(None, doc="A pair.")
    choice: int | str = arg(0, doc="Int or string.")
    password: str | None = arg(None, doc="Secret.", secret=True)


def test_schema_shape():
    s = schema_for(Args, templated=False)
    assert s["type"] == "object"
    assert s["additionalProperties"] is False
    assert s["required"] == ["dest"]
    p = s["properties"]
    assert p["dest"] == {"type": "string", "description": "Destination."}
    assert p["port"] == {"type": "integer", "description": "Port.", "default": 22}
    assert p["delete"]["type"] == "boolean" and p["delete"]["default"] is False
    assert p["ratio"]["type"] == "number"
    assert p["mode"]["enum"] == ["copy", "link"]
    assert p["excludes"]["type"] == "array" and p["excludes"]["items"] == {"type": "string"}
    assert p["excludes"]["default"] == []
    assert p["codes"]["items"] == {"type": "integer"} and p["codes"]["default"] == []
    assert p["env"]["additionalProperties"] == {"type": "string"}
    assert p["timeout"]["anyOf"] == [{"type": "number"}, {"type": "null"}]
    assert p["extra"] == {"description": "Anything.", "default": None}
    auth = p["auth"]["anyOf"][0]
    assert auth["required"] == ["user"] and auth["additionalProperties"] is False
    assert p["pair"]["anyOf"][0]["prefixItems"] == [{"type": "string"}, {"type": "integer"}]
    assert p["choice"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    jsonschema.Draft202012Validator.check_schema(s)


def test_templated_schema_accepts_templates_in_non_string_positions():
    s = schema_for(Args, templated=True)
    jsonschema.Draft202012Validator.check_schema(s)
    v = jsonschema.Draft202012Validator(s)
    ok = {
        "dest": "/srv/{{ app }}",
        "port": "{{ base_port + 1 }}",
        "delete": "{% if x %}true{% endif %}",
        "excludes": "{{ my_list }}",
        "codes": [1, "{{ code }}"],
        "mode": "{{ mode }}",
        "auth": {"user": "u", "token": "{{ token }}"},
    }
    assert list(v.iter_errors(ok)) == []
    assert [e.validator for e in v.iter_errors({"dest": "x", "port": "80a"})] == ["anyOf"]
    assert list(v.iter_errors({"dest": "x", "delet": True}))[0].validator == "additionalProperties"
    assert s["properties"]["dest"] == {"type": "string", "description": "Destination."}  # strings stay strings
    assert s["properties"]["port"]["anyOf"] == [{"type": "integer"}, TEMPLATE_SCHEMA]
    assert s["properties"]["timeout"]["anyOf"][-1] == TEMPLATE_SCHEMA  # template alternative last


def test_build_converts_clean_rendered_strings():
    a = build(
        Args,
        {
            "dest": "/srv",
            "port": "8080",
            "delete": "TRUE",
            "ratio": "1.5",
            "excludes": ["a", "b"],
            "codes": ["1", 2],
            "timeout": "30",
            "auth": {"user": "u"},
            "pair": ["x", "3"],
            "choice": "7",
        },
        path="steps.s.args",
    )
    assert (a.port, a.delete, a.ratio, a.excludes, a.codes, a.timeout) == (8080, True, 1.5, ("a", "b"), [1, 2], 30.0)
    assert a.auth == Auth("u") and a.pair == ("x", 3)
    assert a.choice == "7"  # a string is a valid member of `int | str`: kept as written
    assert build(Args, {"dest": "d", "delete": "False"}, path="p").delete is False


def test_build_keeps_defaults_and_freezes():
    a = build(Args, {"dest": "d"}, path="p")
    assert (a.port, a.excludes, a.env, a.mode) == (22, (), {}, "copy")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"dest": "d", "port": "80a"}, "steps[2].args.port: 'port' must be integer (got string '80a')"),
        ({"dest": "d", "port": True}, "steps[2].args.port: 'port' must be integer (got boolean true)"),
        ({"dest": "d", "port": 8.0}, "steps[2].args.port: 'port' must be integer (got number 8.0)"),
        ({"dest": "d", "delete": "yes"}, "steps[2].args.delete: 'delete' must be boolean (got string 'yes')"),
        ({"dest": "d", "delete": 1}, "steps[2].args.delete: 'delete' must be boolean (got integer 1)"),
        ({"dest": "d", "ratio": "1,5"}, "steps[2].args.ratio: 'ratio' must be number (got string '1,5')"),
        ({"dest": "d", "mode": "move"}, "steps[2].args.mode: 'mode' must be one of 'copy', 'link' (got string 'move')"),
        (
            {"dest": "d", "excludes": "a,b"},
            "steps[2].args.excludes: 'excludes' must be list of string (got string 'a,b')",
        ),
        ({"dest": "d", "codes": [1, "x"]}, "steps[2].args.codes[1]: 'codes[1]' must be integer (got string 'x')"),
        ({"dest": "d", "env": {"A": None}}, "steps[2].args.env.A: 'env.A' must be string (got null)"),
        ({"dest": None}, "steps[2].args.dest: 'dest' must be string (got null)"),
        ({"dest": "d", "delet": True}, "steps[2].args: unknown argument 'delet' (did you mean 'delete'?)"),
        ({"port": 1}, "steps[2].args: missing required argument 'dest'"),
        ({"dest": "d", "auth": {"usr": "x"}}, "steps[2].args.auth: unknown argument 'usr' (did you mean 'user'?)"),
        ({"dest": "d", "pair": ["x"]}, "steps[2].args.pair: 'pair' must have 2 items (got 1)"),
        (
            {"dest": "d", "timeout": "soon"},
            "steps[2].args.timeout: 'timeout' must be number or null (got string 'soon')",
        ),
    ],
)
def test_build_errors_name_field_expected_and_found(data, message):
    with pytest.raises(ArgError) as info:
        build(Args, data, path="steps[2].args")
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_secret_values_never_appear_in_errors():
    with pytest.raises(ArgError) as info:
        build(Args, {"dest": "d", "password": ["hunter2"]}, path="p")
    assert "hunter2" not in str(info.value)
    assert "(got list)" in str(info.value)
    with pytest.raises(ArgError) as info:
        build(Args, {"dest": "d", "auth": {"user": "u", "token": True}}, path="p")
    assert str(info.value) == "p.auth.token: 'token' must be string or null (got boolean)"


def test_build_rejects_non_mapping():
    with pytest.raises(ArgError, match="must be a mapping"):
        build(Args, ["x"], path="p")
    assert build(Auth, {"user": "u"}, path="p") == Auth("u")

    @dataclass(frozen=True)
    class AllDefaults:
        x: int = arg(1, doc="x")

    assert build(AllDefaults, None, path="p") == AllDefaults()  # `args:` left empty


def test_numbers_rendered_into_string_fields_are_kept_as_text():
    assert build(Args, {"dest": 8080}, path="p").dest == "8080"


def test_unsupported_type_is_a_programming_error():
    @dataclass(frozen=True)
    class Bad:
        x: set = arg(doc="x")

    with pytest.raises(TypeError):
        schema_for(Bad, templated=False)
