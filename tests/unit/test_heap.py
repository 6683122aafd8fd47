"""system/heap.py on this machine's C library (glibc: the settings take)."""

from __future__ import annotations

import ctypes
import platform

import pytest

from tykworker.system import heap

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")


@glibc
def test_keep_large_blocks_takes_on_glibc() -> None:
    assert heap.keep_large_blocks() is True


@glibc
def test_release_gives_free_pages_back_after_a_large_block() -> None:
    heap.keep_large_blocks()
    block = ctypes.create_string_buffer(8 * 1024 * 1024)  # from the heap now, not mmap
    del block
    assert heap.release() is True  # the freed top of the heap went back to the kernel


def test_both_never_raise() -> None:
    assert isinstance(heap.keep_large_blocks(), bool)
    assert isinstance(heap.release(), bool)
