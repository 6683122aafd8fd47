"""The supervisor's end of its children's channels: one per child, read and checked per
sender.

Every child gets a ``SOCK_SEQPACKET`` socketpair of its own before it is forked; the
supervisor keeps one end, the child the other (and no other descriptor of the
supervisor's: ``process.Supervisor._fork``). Because the supervisor knows who holds each
channel, a message is judged by its channel, never by what it claims:

* a datagram is one CONTROL frame; anything else (partial, oversized, undecodable, wrong
  field types) is dropped. It cannot affect another sender: there is no shared stream to
  desynchronise. Only a sender's first bad message is logged (plugin code may hold a
  worker's channel: no log flood). A worker's channel is closed by the supervisor as soon
  as its ``WorkerReady`` is accepted: a worker has nothing more to say.
* ``refusal`` (pure) says why a decoded message is not acceptable from its sender: a
  worker reports only ``WorkerReady`` for its own pid and the generation it was given;
  only the front reports ``FrontReady`` and ``Stuck``, and only for a live worker.
* ``read`` takes at most ``BATCH`` datagrams from one channel per wake-up, so a child
  that floods its channel delays nobody: the loop serves the other channels between.
"""

from __future__ import annotations

import logging
import selectors
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from tykworker.errors import ProtocolError
from tykworker.wire import control

log = logging.getLogger("tykworker.supervisor")

BATCH: Final = 64


@dataclass(slots=True)
class Sender:
    """Who holds the other end of a channel: the front (``generation`` 0) or a worker."""

    sock: socket.socket  # the supervisor's end
    is_front: bool
    generation: int = 0
    pid: int = 0  # known once forked
    bad: int = 0  # messages dropped


def open_pair() -> tuple[socket.socket, socket.socket]:
    """(supervisor's end, child's end) of a new channel. The supervisor's end never
    blocks."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mine.setblocking(False)
    return mine, theirs


def refusal(sender: Sender, message: control.Message, is_live_worker: Callable[[int], bool]) -> str:
    """Why ``message`` is not acceptable from ``sender`` ("" when it is)."""
    if isinstance(message, control.WorkerReady) and not sender.is_front:
        if message.pid != sender.pid:
            return f"names pid {message.pid}"
        if message.generation != sender.generation:
            return f"names generation {message.generation} (it was given {sender.generation})"
        return ""
    if isinstance(message, control.FrontReady | control.Stuck) and sender.is_front:
        if message.pid != sender.pid:
            return f"names pid {message.pid}"
        if isinstance(message, control.Stuck) and not is_live_worker(message.worker):
            return f"names pid {message.worker}, not a live worker"
        return ""
    return f"{message.op!r} is not a message this sender may send"


class Channels:
    """The open channels, registered with the supervisor's selector (``data`` = Sender)."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        self.senders: dict[int, Sender] = {}  # pid -> its channel

    def attach(self, sender: Sender, pid: int) -> None:
        """``sender``'s child was forked as ``pid``: start reading its channel."""
        sender.pid = pid
        self.senders[pid] = sender
        self.selector.register(sender.sock, selectors.EVENT_READ, sender)

    def close(self, pid: int) -> None:
        sender = self.senders.pop(pid, None)
        if sender is not None:
            self.selector.unregister(sender.sock)
            sender.sock.close()

    def front(self) -> Sender | None:
        return next((s for s in self.senders.values() if s.is_front), None)

    def sockets(self) -> list[socket.socket]:
        return [s.sock for s in self.senders.values()]

    def receive(
        self, sender: Sender, is_live_worker: Callable[[int], bool]
    ) -> list[control.Message]:
        """The acceptable messages waiting on ``sender``'s channel (at most ``BATCH``
        datagrams). EOF, or a worker's accepted ready, closes the channel. Never raises."""
        messages: list[control.Message] = []
        for _ in range(BATCH):
            try:
                datagram = sender.sock.recv(control.MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as exc:
                log.error("channel of pid %d failed: %s", sender.pid, exc)
                self.close(sender.pid)
                break
            if not datagram:  # the child closed its end (a worker, once ready) or died
                self.close(sender.pid)
                break
            try:
                message = control.decode_frame(datagram)
                why = refusal(sender, message, is_live_worker)
            except ProtocolError as exc:
                why = str(exc)
            if why:
                self._bad(sender, why)
                continue
            messages.append(message)
            if isinstance(message, control.WorkerReady):
                self.close(sender.pid)
                break
        return messages

    def _bad(self, sender: Sender, why: str) -> None:
        sender.bad += 1
        if sender.bad == 1:
            what = "the front" if sender.is_front else "worker"
            log.error(
                "bad message from %s pid %d dropped (and any further ones, silently): %s",
                what, sender.pid, why,
            )  # fmt: skip
