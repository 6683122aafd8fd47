"""This process's resident set size, read straight from ``/proc/self/statm``.

A worker reads it after calls (every call when it recycles by memory, ``max_rss_mb``):
psutil's ``memory_info`` costs ~17 µs here (five system calls and its Python layer), this
~8 µs (open, read, close). The file is opened per read, not kept open: a plugin may close
or reuse any descriptor, and a kept one could then read another file.

Invariant: never raises; 0 when the file cannot be read (not Linux, /proc not mounted).
"""

from __future__ import annotations

import os
from typing import Final

_PAGE: Final = os.sysconf("SC_PAGE_SIZE")
_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC


def rss_bytes() -> int:
    """Resident set size in bytes (``statm``'s second field, in pages)."""
    try:
        fd = os.open("/proc/self/statm", _FLAGS)
    except OSError:
        return 0
    try:
        fields = os.read(fd, 256).split()
    except OSError:
        return 0
    finally:
        os.close(fd)
    try:
        return int(fields[1]) * _PAGE
    except (IndexError, ValueError):
        return 0
