"""Tag selection policies: newest by timestamp or build number, semver ranges."""

from __future__ import annotations

import pytest

from engine.errors import ArgError
from modules._support.tagpolicy import (
    TagPolicy,
    parse_semver,
    select_tag,
    semver_range,
    tag_build_number,
    tag_timestamp,
)


@pytest.mark.parametrize(
    "tags, policy, want",
    [
        # production: newest master-* by the timestamp in the tag, whatever its format
        (
            ["master-20240101T000000Z-aaa", "master-20240301T120000Z-bbb", "stag-20250101T000000Z-ccc"],
            TagPolicy("master-*"),
            "master-20240301T120000Z-bbb",
        ),
        (
            ["master-2024-03-01T12-00-00-abc", "master-2024-02-29T23-59-59-def"],
            TagPolicy("master-*"),
            "master-2024-03-01T12-00-00-abc",
        ),
        (["main-0a1b2c3-1714567890", "main-9f9f9f9-1714560000"], TagPolicy("main-*"), "main-0a1b2c3-1714567890"),
        (["master-1714567890123-x", "master-1714567890000-y"], TagPolicy("master-*"), "master-1714567890123-x"),
        # staging: build numbers compare as numbers, not strings
        (["stag-9-abc", "stag-100-def", "stag-42-0a0"], TagPolicy("stag-*"), "stag-100-def"),
        (["stag-9", "stag-100"], TagPolicy("stag-*", order="alphabetical"), "stag-9"),
        # a regex with a named group says where the key is
        (["build-abc-7", "build-def-12"], TagPolicy(r"^build-[a-f]+-(?P<build>\d+)$", order="build"), "build-def-12"),
        # semver ranges; pre-releases only when asked for
        (["v1.2.3", "v1.10.0", "v2.0.0", "v1.11.0-rc.1"], TagPolicy(semver_range="^1.2"), "v1.10.0"),
        (["1.2.3", "1.2.10", "1.3.0"], TagPolicy(semver_range="~1.2"), "1.2.10"),
        (["1.2.3", "2.0.0-rc.1"], TagPolicy(semver_range=">=2.0.0-rc.0"), "2.0.0-rc.1"),
        (["1.0.0", "1.5.0", "3.0.0"], TagPolicy(semver_range="<1.2 || >=2 <3"), "1.0.0"),
        (["app-1.4.0", "app-1.5.1", "other-9.0.0"], TagPolicy("app-*", order="semver"), "app-1.5.1"),
    ],
)
def test_select(tags, policy, want):
    assert select_tag(tags, policy)[0] == want


def test_candidates_are_ordered_best_first():
    assert select_tag(["stag-1", "stag-3", "stag-2", "stag-3"], TagPolicy("stag-*"))[1] == [
        "stag-3",
        "stag-2",
        "stag-1",
    ]


def test_errors():
    with pytest.raises(ArgError, match="no tag matches pattern 'master-\\*'.*got 2 tags: stag-1, latest"):
        select_tag(["stag-1", "latest"], TagPolicy("master-*"))
    with pytest.raises(ArgError, match="set 'tag_order'"):
        select_tag(["master-abc", "master-def"], TagPolicy("master-*"))
    with pytest.raises(ArgError, match="tags without a timestamp"):
        select_tag(["master-20240101T000000Z", "master-x"], TagPolicy("master-*", order="timestamp"))
    with pytest.raises(ArgError, match="'tag_order' must be one of"):
        TagPolicy(order="newest")
    with pytest.raises(ArgError, match="invalid comparator|invalid version"):
        TagPolicy(semver_range=">=banana")


def test_extractors():
    assert tag_timestamp("master-20240101T000000Z-abc") == 1704067200
    assert tag_timestamp("master-20241399T000000Z") is None  # not a date
    assert tag_timestamp("master-0a1b2c3") is None
    assert tag_build_number("master-1234-abc", TagPolicy("master-*")) == 1234
    assert str(parse_semver("v1.2.3-rc.1+b5")) == "1.2.3-rc.1"
    assert parse_semver("1.2.3-alpha") < parse_semver("1.2.3-beta") < parse_semver("1.2.3")
    assert parse_semver("1.2.3-2") < parse_semver("1.2.3-10")
    r = semver_range("1.x")
    assert r(parse_semver("1.9.9")) and not r(parse_semver("2.0.0"))
