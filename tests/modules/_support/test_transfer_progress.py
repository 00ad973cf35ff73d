"""rsync's `--info=progress2` records and download chunks counted into `progress` calls."""

from __future__ import annotations

from modules._support.transfer_progress import RsyncProgress, metered, parse_progress2


def test_progress2_records_in_any_digit_grouping():
    assert parse_progress2(b"     32,768   0%    0.00kB/s    0:00:00  ") == 32768
    assert parse_progress2(b" 12.582.912 100%    3,81MB/s    0:00:03 (xfr#1, to-chk=0/3)") == 12582912
    assert parse_progress2(b"  1'048'576  50%  1.00MB/s  0:00:01") == 1048576
    assert parse_progress2(b"rsync: [sender] link_stat failed") is None
    assert parse_progress2(b"") is None


def test_downloads_are_counted_chunk_by_chunk_and_passed_on_unchanged():
    calls: list[tuple] = []
    out = b"".join(metered(iter([b"ab", b"cde", b""]), lambda *a: calls.append(a), 5))
    assert out == b"abcde" and calls == [(2, 5, "download"), (5, 5, "download"), (5, 5, "download")]


def test_a_small_transfer_asks_rsync_for_no_progress():
    small = RsyncProgress(lambda *_: None, 1000)
    assert not small.enabled and small.argv(["rsync", "-a"]) == ["rsync", "-a"]
    small.finish()
    big = RsyncProgress(lambda *_: None, 64 << 20)
    assert big.argv(["rsync", "-a"]) == ["rsync", "--info=progress2", "-a"]
    big.finish()  # never started: its pipe is closed
