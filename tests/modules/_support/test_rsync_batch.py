"""What a batch lists (modules/_support/rsync_batch.py): a reading rsync creates no implied
directory, so every parent of a planned path is listed, parents first."""

from __future__ import annotations

from modules._support.rsync_batch import batch_paths


def test_parents_are_listed_before_their_contents():
    assert batch_paths(["a/b/c.txt", "a/d.txt", "e"]) == ["a", "a/b", "a/b/c.txt", "a/d.txt", "e"]


def test_a_planned_directory_is_listed_once():
    assert batch_paths(["a", "a/b", "a/b/x"]) == ["a", "a/b", "a/b/x"]


def test_odd_names_are_kept_as_they_are():
    assert batch_paths(["-rf/it's here", "sp ace/x y"]) == ["-rf", "-rf/it's here", "sp ace", "sp ace/x y"]
