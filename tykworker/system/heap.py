"""The C heap of a process that moves large calls: glibc ``malloc`` told to keep and
reuse the memory of large blocks instead of mapping fresh pages for each call.

By default glibc serves a block over its mmap threshold (128 KiB, raised on the fly to
the size of the last such block freed) with a fresh ``mmap`` and gives the heap's free top
back to the kernel past a trim threshold. A worker serving a 1 MiB body allocates ~2 MiB
received + the parsed message + ~1 MiB reply per call, all freed before the next: each
call then touched fresh pages, ~1,000-1,500 minor page faults and ~1 ms of kernel time per
call (bench/profile_gateway.py ``minflt/req``, BENCHMARKS.md). ``keep_large_blocks``
serves blocks up to ``MMAP_THRESHOLD`` from the heap and keeps up to ``TRIM_THRESHOLD`` of
free memory at its top, so the next call reuses pages already mapped; ``release`` (called
when the process goes idle) hands the free memory back, so an idle process holds no more
than it did before its large calls.

Invariant: both are best effort and never raise: on a C library without ``mallopt``/
``malloc_trim`` (musl) they do nothing and say so (False).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Final

#: ``mallopt`` parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
#: Blocks up to this size come from the heap (glibc's ceiling for the setting: 32 MiB).
MMAP_THRESHOLD: Final = 32 * 1024 * 1024
#: Free memory the heap keeps at its top between calls.
TRIM_THRESHOLD: Final = 64 * 1024 * 1024


@functools.cache  # one handle for the process: a front releases on every client's exit
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def keep_large_blocks() -> bool:
    """Set this process's malloc to keep large blocks for reuse; False if not glibc."""
    libc = _libc()
    try:
        mallopt = libc.mallopt if libc is not None else None
    except AttributeError:
        return False
    if mallopt is None:
        return False
    trim: int = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    mmap: int = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return trim == 1 and mmap == 1


def release() -> bool:
    """Give the heap's free memory back to the kernel (``malloc_trim(0)``); False if not
    glibc or nothing was released."""
    libc = _libc()
    try:
        released: int = libc.malloc_trim(0) if libc is not None else 0
    except AttributeError:
        return False
    return released == 1
