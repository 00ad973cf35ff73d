"""The strict YAML loader: scalar rules, duplicate keys, tags, aliases, merge keys, locations."""

from __future__ import annotations

import pytest

from engine.errors import LoadError, Location, PlaybookError, ValidationErrors
from engine.yamlio.document import load_file, load_text


def value(text: str):
    return load_text(f"v: {text}\n", "t.yml").data["v"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("null", None),
        ("Null", None),
        ("NULL", None),
        ("~", None),
        ("", None),
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("false", False),
        ("False", False),
        ("FALSE", False),
        ("0", 0),
        ("42", 42),
        ("-7", -7),
        ("+3", 3),
        ("0o755", 0o755),
        ("0x1F", 31),
        ("0.5", 0.5),
        ("1.0", 1.0),
        ("20.5", 20.5),
        ("-0.25", -0.25),
        (".inf", ".inf"),
        ("-.inf", "-.inf"),
        (".nan", ".nan"),
        ("2024-01-01", "2024-01-01"),
        ("1:20", "1:20"),
        ("1.2.3", "1.2.3"),
        ("v1.10", "v1.10"),
        ("tRUE", "tRUE"),
        ("yess", "yess"),
        ("hello world", "hello world"),
        ("'yes'", "yes"),
        ('"1.10"', "1.10"),
        ("'0755'", "0755"),
        ("'true'", "true"),
        ('"~"', "~"),
        ("''", ""),
        ("!!str yes", "yes"),
        ("!!int 5", 5),
        ("!!float 1", 1.0),
        ("!!bool true", True),
        ("!!null ~", None),
        ("|\n  yes\n", "yes\n"),
    ],
)
def test_scalars_resolve_strictly(text, expected):
    got = value(text)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    "text, words",
    [
        ("yes", ["ambiguous value 'yes'", "write true/false", "quote it"]),
        ("No", ["ambiguous value 'No'"]),
        ("ON", ["ambiguous value 'ON'"]),
        ("off", ["ambiguous value 'off'"]),
        ("y", ["ambiguous value 'y'"]),
        ("n", ["ambiguous value 'n'"]),
        ("0755", ["ambiguous number '0755'", "write 0o755 for octal", "quote it"]),
        ("-012", ["ambiguous number '-012'", "write -0o12"]),
        ("1.10", ["ambiguous number '1.10'", 'quote it ("1.10")', "write 1.1"]),
        ("1e3", ["ambiguous number '1e3'", "write 1000.0"]),
        (".5", ["ambiguous number '.5'", "write 0.5"]),
        ("1.", ["ambiguous number '1.'"]),
        ("1_000", ["ambiguous number '1_000'"]),
        ("0b101", ["ambiguous number '0b101'"]),
    ],
)
def test_ambiguous_scalars_are_errors(text, words):
    with pytest.raises(LoadError) as info:
        load_text(f"key: {text}\n", "t.yml")
    assert info.value.location == Location("t.yml", 1, 6)
    for word in words:
        assert word in str(info.value)


def test_keys_are_strings_and_never_ambiguous():
    doc = load_text("on: 1\ny: 2\n404: x\ntrue: 3\n", "t.yml")
    assert doc.data == {"on": 1, "y": 2, "404": "x", "true": 3}


def test_duplicate_key_names_both_places():
    with pytest.raises(LoadError) as info:
        load_text("a: 1\nb:\n  c: 1\n  c: 2\n", "f.yml")
    assert str(info.value) == "f.yml:4:3 duplicate key 'c' (first at line 3)"


@pytest.mark.parametrize(
    "text, tag",
    [
        ("!!python/object/apply:os.system ['echo hi']", "!!python/object/apply:os.system"),
        ("!!python/name:os.system", "!!python/name:os.system"),
        ("!foo bar", "!foo"),
        ("!!binary aGk=", "!!binary"),
        ("!!timestamp 2024-01-01", "!!timestamp"),
        ("!!set {a}", "!!set"),
        ("!!omap [a: 1]", "!!omap"),
        ("!custom {a: 1}", "!custom"),
        ("!custom [1]", "!custom"),
    ],
)
def test_tags_are_not_allowed(text, tag):
    with pytest.raises(LoadError) as info:
        load_text(f"x: {text}\n", "t.yml")
    assert "tags are not allowed" in str(info.value)
    assert tag in str(info.value)
    assert info.value.location == Location("t.yml", 1, 4)


def test_several_problems_are_reported_together_sorted():
    with pytest.raises(ValidationErrors) as info:
        load_text("a: yes\nb: 0755\nb: 1\n", "t.yml")
    assert [(e.location.line, e.location.col) for e in info.value.errors] == [(1, 4), (2, 4), (3, 1)]
    assert all(isinstance(e, LoadError) for e in info.value.errors)


@pytest.mark.parametrize(
    "text, line, col, words",
    [
        ("a: b: c\n", 1, 5, "mapping values are not allowed"),
        ("a: [1, 2\nb: 3\n", 2, 2, "did not find expected ',' or ']'"),
        ("a:\n\t- x\n", 2, 1, "a tab: indent with spaces"),
        ("a: 'open\n", 2, 1, "found unexpected end of stream"),
        ("a: 1\n---\nb: 2\n", 2, 1, "expected a single document"),
        ("a: *nope\n", 1, 4, "undefined alias"),
    ],
)
def test_syntax_errors_are_located(text, line, col, words):
    with pytest.raises(LoadError) as info:
        load_text(text, "s.yml")
    assert info.value.location == Location("s.yml", line, col)
    assert "YAML syntax error" in str(info.value)
    assert words in str(info.value)


def test_anchors_aliases_and_merge_keys():
    text = (
        "base: &base {user: deploy, port: 22}\n"
        "extra: &extra {port: 2222, key: k}\n"
        "one:\n"
        "  <<: *base\n"
        "  port: 2200\n"
        "two:\n"
        "  <<: [*extra, *base]\n"
        "list: &l [1, 2]\n"
        "again: *l\n"
    )
    doc = load_text(text, "m.yml")
    assert doc.data["one"] == {"user": "deploy", "port": 2200}
    assert doc.data["two"] == {"port": 2222, "key": "k", "user": "deploy"}
    assert doc.data["again"] == [1, 2]
    assert doc.where(("one", "port")) == Location("m.yml", 5, 9)
    assert doc.where(("one", "user")) == Location("m.yml", 1, 20)  # where the merged value is written
    assert doc.key_where(("one", "user")) == Location("m.yml", 1, 14)
    assert doc.exact(("one", "<<")) is None  # the merge key itself is not data


def test_merge_key_needs_mappings():
    with pytest.raises(LoadError, match="merge key '<<' takes a mapping"):
        load_text("a:\n  <<: [1]\n", "m.yml")


def test_recursive_alias_is_an_error():
    with pytest.raises(LoadError, match="recursive"):
        load_text("a: &a [*a]\n", "r.yml")


def test_alias_bombs_are_refused_at_the_alias_that_crosses_the_budget():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    with pytest.raises(LoadError, match="aliases expand to more than 100000 values") as err:
        load_text("\n".join(lines) + "\n", "bomb.yml")
    # a1..a3 stand for 12330 values; a4's aliases for 11111 each, so its 8th crosses 100000
    assert err.value.location == Location("bomb.yml", 5, 45)


def test_aliases_within_the_budget_still_share_their_value():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 4):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    doc = load_text("\n".join(lines) + "\n", "ok.yml")
    assert doc.data["a3"][0][0][0][0] == "x" and doc.data["a3"][9] is doc.data["a2"]


def test_locations_of_values_and_keys():
    text = "steps:\n  - id: a\n    args:\n      dest: /srv\n      list: [1, 2]\n"
    doc = load_text(text, "l.yml")
    assert doc.where(()) == Location("l.yml", 1, 1)
    assert doc.where(("steps",)) == Location("l.yml", 2, 3)
    assert doc.where(("steps", 0)) == Location("l.yml", 2, 5)
    assert doc.where(("steps", 0, "args", "dest")) == Location("l.yml", 4, 13)
    assert doc.key_where(("steps", 0, "args", "dest")) == Location("l.yml", 4, 7)
    assert doc.where(("steps", 0, "args", "list", 1)) == Location("l.yml", 5, 17)
    # a path that is not written falls back to the nearest enclosing value
    assert doc.where(("steps", 0, "args", "missing")) == Location("l.yml", 4, 7)
    assert doc.key_where(("steps", 0, "nope")) == Location("l.yml", 2, 5)
    assert sorted(doc.paths(("steps", 0, "args"))) == [("dest",), ("list",), ("list", 0), ("list", 1)]


def test_empty_and_comment_only_documents_are_none():
    assert load_text("", "e.yml").data is None
    assert load_text("# nothing\n", "e.yml").data is None
    assert load_text("", "e.yml").where(()) is None


def test_load_file_errors_are_load_errors(tmp_path):
    with pytest.raises(LoadError, match="cannot read file"):
        load_file(str(tmp_path / "nope.yml"))
    p = tmp_path / "bin.yml"
    p.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(PlaybookError):
        load_file(str(p))
    good = tmp_path / "bom.yml"
    good.write_bytes("\ufeffa: 1\n".encode())
    assert load_file(str(good)).data == {"a": 1}


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(PlaybookError):
        load_text("[" * 5000 + "]" * 5000, "deep.yml")
