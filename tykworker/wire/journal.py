"""The reply journal: what a worker made for the bridge but has not written to it yet, in
memory the front can read, so that a worker may answer a batch of calls in one write and
still lose no reply when it dies in the middle of the batch.

Under load the front sends a worker several calls at once (front/router.py); the worker
runs them in order and writes their replies when its input is drained (worker/loop.py),
one system call and one wake-up of the front per batch instead of per call. Until that
write, each reply is also appended here, before the next call starts. If the worker dies
(or a call it holds passes its deadline, the worker alive but hung), the front reads the
journal after the socket: every reply of a call that ran is delivered, the first call
without one is the one that killed it, and the others never ran (the same answers as
when each reply was written at once).

One journal per bridge connection: anonymous shared memory (``memfd_create``) that the
front makes when it accepts the connection (``create``) and passes to the worker in the
connection's first frame (``FIRST_FRAME`` with the descriptor as SCM_RIGHTS, without one
if it could not be made: front/core.py sends it, worker/loop.py reads it and checks it
with ``check_first_frame``). No file in the runtime directory: its
pages are never written back to a disk (a file's would be, wherever the runtime
directory is not a tmpfs, and each write after a write-back faults), nothing is left
behind by a process that was killed, and the worker's later privilege drop does not
matter. Both sides map it and close the descriptor they were given (CPython's ``mmap``
keeps a duplicate of its own). The front seals its size first: a plugin that used the
worker's descriptor could not shrink the memory under the front's mapping (a read there
would kill the front with SIGBUS).

Layout: a 16-byte header, then the bytes. ``start`` (u64) is the offset in the worker's
bridge stream of the first journal byte (everything the worker wrote before it), ``length``
(u32) how many bytes are committed. The worker appends a whole frame group and then
commits its new length; after writing the journal's bytes to the socket it resets the
journal, ``length`` to 0 first and then ``start`` to the new stream offset.

Invariants: one writer (the worker's main thread). ``start`` only grows (a reset follows a
write of at least one byte), so a reader that sees the same ``start`` before and after
copying the committed bytes has a consistent copy; bytes below ``length`` never change
until a reset. A reader that knows how much of the stream it has read takes only what
follows (``tail``): never a byte twice, never a gap. The reader trusts nothing it reads:
a length past the mapping is ignored, and what it returns goes through the same frame
decoder as the socket's bytes.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from typing import Final

from tykworker.wire.frames import HEADER, HEADER_SIZE, MAGIC, FrameKind, encode_frame

#: Bytes of frames a journal holds; a batch that would overflow it is written at once.
CAPACITY: Final = 256 * 1024
_HEADER: Final = struct.Struct("<QI4x")
_LENGTH: Final = struct.Struct("<I")
_LENGTH_AT: Final = 8
_SEALS: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
#: The first frame of a bridge connection (front -> worker); the journal rides with it.
FIRST_FRAME: Final = encode_frame(FrameKind.JOURNAL, 0)


def create(capacity: int = CAPACITY) -> int:
    """A new journal's descriptor (the front's): zeroed (``start`` 0, nothing committed),
    its size sealed."""
    fd = os.memfd_create("tykworker-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, _HEADER.size + capacity)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_first_frame(data: bytes) -> None:
    """``ValueError`` unless ``data`` (the bridge's first 16 bytes, front -> worker) is
    ``FIRST_FRAME``."""
    if len(data) != HEADER_SIZE:
        raise ValueError(f"the bridge closed in its first frame: {data!r}")
    magic, _version, kind, length, _call_id = HEADER.unpack(data)
    if magic != MAGIC or kind != FrameKind.JOURNAL or length:
        raise ValueError(f"the bridge's first frame is not a JOURNAL frame: {data!r}")


def _size(fd: int) -> int:
    size = os.fstat(fd).st_size
    if size < _HEADER.size:
        raise ValueError(f"not a journal ({size} bytes)")
    return size


class JournalWriter:
    """The worker's side: ``append`` frame groups, ``reset`` once they are written. Maps
    ``fd``; the caller closes it."""

    def __init__(self, fd: int) -> None:
        size = _size(fd)
        self._mm = mmap.mmap(fd, size)
        self.capacity = size - _HEADER.size
        self.length = 0

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

    def committed(self) -> memoryview:
        """The committed bytes, in place (what the worker writes to the socket); the
        caller releases the view (``with``) before the next ``append``."""
        with memoryview(self._mm) as whole:
            return whole[_HEADER.size : _HEADER.size + self.length]

    def reset(self, start: int) -> None:
        """Everything up to stream offset ``start`` is written to the socket."""
        self.length = 0
        _LENGTH.pack_into(self._mm, _LENGTH_AT, 0)
        _HEADER.pack_into(self._mm, 0, start, 0)

    def close(self) -> None:
        self._mm.close()


class JournalReader:
    """The front's side: a read-only view of one worker's journal. Maps ``fd``; the caller
    closes it."""

    def __init__(self, fd: int) -> None:
        self._mm = mmap.mmap(fd, _size(fd), access=mmap.ACCESS_READ)

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
