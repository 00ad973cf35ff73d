"""Source digests are reused across runs only while a file is unchanged."""

from __future__ import annotations

import os

from modules._support.manifest import cached_manifest, file_sha256


def test_digest_cache_reuses_unchanged_files_and_sees_rewrites(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("one")
    (src / "b.txt").write_text("two")
    state = tmp_path / "state"
    first = cached_manifest(str(src), str(state), "run-1")
    assert first["a.txt"].sha256 == file_sha256(str(src / "a.txt"))

    reads = []
    import modules._support.manifest as m

    real = m.file_sha256
    monkeypatch.setattr(m, "file_sha256", lambda p: reads.append(os.path.basename(p)) or real(p))
    st = os.stat(src / "b.txt")
    (src / "b.txt").write_text("TWO")  # same size...
    os.utime(src / "b.txt", ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and the old mtime restored
    second = cached_manifest(str(src), str(state), "run-2")
    assert reads == ["b.txt"]  # a.txt came from the cache; b.txt's ctime betrayed the rewrite
    assert second["b.txt"].sha256 == real(str(src / "b.txt")) != first["b.txt"].sha256
    assert cached_manifest(str(src), str(state), "run-2") is second  # once per run
