"""Host patterns select exactly what docs/patterns.md says, on a 20-host inventory."""

from __future__ import annotations

import pytest

from engine.errors import ValidationError
from engine.model.config import Group, Host, Inventory
from engine.model.patterns import select_hosts


def _inventory() -> Inventory:
    web = [f"web{i:02d}" for i in range(1, 11)]
    db = ["db01", "db02"]
    cache = [f"cache{i}" for i in range(1, 5)]
    misc = ["lb01", "lb02", "mon01", "bastion"]
    names = web + db + cache + misc
    assert len(names) == 20
    hosts = {h: Host(h) for h in names}
    groups = {
        "web": Group("web", hosts=tuple(web[2:]), children=("canary",)),
        "canary": Group("canary", hosts=("web01", "web02")),
        "db": Group("db", hosts=tuple(db)),
        "cache": Group("cache", hosts=tuple(cache)),
        "edge": Group("edge", hosts=("lb01", "lb02"), children=("web",)),
    }
    return Inventory("inv.yml", hosts, groups)


WEB = [f"web{i:02d}" for i in range(1, 11)]


@pytest.mark.parametrize(
    "pattern,expected",
    [
        ("web", WEB),
        ("web:!canary", WEB[2:]),
        ("web:&canary", ["web01", "web02"]),
        ("web0[1-3]", ["web01", "web02", "web03"]),
        ("web,db", WEB + ["db01", "db02"]),
        ("all:!db", [h for h in _inventory().hosts if not h.startswith("db")]),
        ("!web07", [h for h in _inventory().hosts if h != "web07"]),
        (
            "edge",
            ["web01", "web02", "web03", "web04", "web05", "web06", "web07", "web08", "web09", "web10", "lb01", "lb02"],
        ),
        ("edge:!web", ["lb01", "lb02"]),
        ("~^cache[12]$", ["cache1", "cache2"]),
        ("cache*:&~[34]$", ["cache3", "cache4"]),
        ("!canary:web", WEB[2:]),  # order of terms does not matter
        ("db02,db01", ["db01", "db02"]),  # result keeps inventory order
        ("*", list(_inventory().hosts)),
        ("mon01,bastion", ["mon01", "bastion"]),
        ("can*", ["web01", "web02"]),
    ],
)
def test_documented_patterns(pattern, expected):
    assert select_hosts(_inventory(), pattern) == expected


def test_unknown_term_is_an_error_with_suggestion():
    with pytest.raises(ValidationError) as err:
        select_hosts(_inventory(), "webb:!canary", what="--limit")
    assert "'webb' matches no host or group" in str(err.value)
    assert "did you mean 'web'" in str(err.value)
    assert str(err.value).startswith("--limit")


def test_list_of_patterns_is_a_union():
    assert select_hosts(_inventory(), ["db01", "lb01"]) == ["db01", "lb01"]
