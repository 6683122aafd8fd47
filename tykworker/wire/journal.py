"""The reply journal: what a worker made for the bridge but has not written to it yet, in
memory the front can read, so that a worker may answer a batch of calls in one write and
still lose no reply when it dies in the middle of the batch.

Under load the front sends a worker several calls at once (front/router.py); the worker
runs them in order and writes their replies when its input is drained (worker/loop.py),
one system call and one wake-up of the front per batch instead of per call. Until that
write, each reply is also appended here, before the next call starts. If the worker dies
(or a call it holds passes its deadline, the worker alive but hung), the front reads the
journal after the socket: every reply of a call that ran is delivered, the first call
without one is the one that killed it, and the others never ran (DESIGN.md invariant 5,
unchanged).

One file per worker, ``<runtime_dir>/journal.<pid>``: created and mapped by the worker
before it drops privileges and sends HELLO, opened read-only and unlinked by the front when
it reads that HELLO (the supervisor removes the file of a worker that died before).

Layout: a 16-byte header, then the bytes. ``start`` (u64) is the offset in the worker's
bridge stream of the first journal byte (everything the worker wrote before it), ``length``
(u32) how many bytes are committed. The worker appends a whole frame group and then
commits its new length; after writing the journal's bytes to the socket it resets the
journal, ``length`` to 0 first and then ``start`` to the new stream offset.

Invariants: one writer (the worker's main thread). ``start`` only grows (a reset follows a
write of at least one byte), so a reader that sees the same ``start`` before and after
copying the committed bytes has a consistent copy; bytes below ``length`` never change
until a reset. A reader that knows how much of the stream it has read takes only what
follows (``tail``): never a byte twice, never a gap.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Final

#: Bytes of frames a journal holds; a batch that would overflow it is written at once.
CAPACITY: Final = 256 * 1024
_HEADER: Final = struct.Struct("<QI4x")
_LENGTH: Final = struct.Struct("<I")
_LENGTH_AT: Final = 8


def journal_path(runtime_dir: Path, pid: int) -> Path:
    return runtime_dir / f"journal.{pid}"


class JournalWriter:
    """The worker's side: ``append`` frame groups, ``reset`` once they are written."""

    def __init__(self, path: Path, capacity: int = CAPACITY) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, _HEADER.size + capacity)
            self._mm = mmap.mmap(fd, _HEADER.size + capacity)
        finally:
            os.close(fd)
        self.capacity = capacity
        self.length = 0
        _HEADER.pack_into(self._mm, 0, 0, 0)

    def append(self, parts: tuple[bytes, ...] | list[bytes]) -> bool:
        """Copy ``parts`` after what the journal holds and commit them; False (nothing
        copied) when they do not fit: the caller writes them to the socket now."""
        mm = self._mm
        at = _HEADER.size + self.length
        end = at
        for part in parts:
            end += len(part)
        if end - _HEADER.size > self.capacity:
            return False
        for part in parts:
            size = len(part)
            mm[at : at + size] = part
            at += size
        self.length = end - _HEADER.size
        _LENGTH.pack_into(mm, _LENGTH_AT, self.length)  # the commit: after the bytes
        return True

    def reset(self, start: int) -> None:
        """Everything up to stream offset ``start`` is written to the socket."""
        self.length = 0
        _LENGTH.pack_into(self._mm, _LENGTH_AT, 0)
        _HEADER.pack_into(self._mm, 0, start, 0)

    def close(self) -> None:
        self._mm.close()


class JournalReader:
    """The front's side: a read-only view of one worker's journal."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as handle:
            self._mm = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        size = len(self._mm)
        if size < _HEADER.size:
            self._mm.close()
            raise ValueError(f"{path}: not a journal ({size} bytes)")

    def tail(self, received: int) -> bytes:
        """The committed bytes from stream offset ``received`` on (``b""``: none, or the
        journal holds bytes the socket has not delivered yet, or it changed under the
        read: then the socket has them)."""
        mm = self._mm
        for _ in range(3):
            start, length = _HEADER.unpack_from(mm, 0)
            if length > len(mm) - _HEADER.size:
                return b""  # not a length the worker wrote: ignored
            skip = received - start
            if skip < 0 or skip >= length:
                return b""
            data = mm[_HEADER.size + skip : _HEADER.size + length]
            if _HEADER.unpack_from(mm, 0)[0] == start:
                return data
        return b""

    def close(self) -> None:
        self._mm.close()
