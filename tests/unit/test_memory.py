"""``system.memory.rss_bytes`` reads what psutil reads, without its cost."""

from __future__ import annotations

import psutil

from tykworker.system import memory


def test_rss_bytes_is_the_resident_set_psutil_reports() -> None:
    ours = memory.rss_bytes()
    theirs = psutil.Process().memory_info().rss
    assert ours > 0
    assert abs(ours - theirs) < 4 * 1024 * 1024  # the same file, read a moment apart


def test_rss_bytes_grows_with_touched_memory() -> None:
    before = memory.rss_bytes()
    block = bytearray(64 * 1024 * 1024)  # zero-filled: every page touched
    try:
        assert memory.rss_bytes() >= before + 48 * 1024 * 1024
    finally:
        del block
