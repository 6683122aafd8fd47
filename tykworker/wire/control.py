"""Control messages between the processes, typed: the only module that reads or writes them.

Channels (see supervisor/process.py for who holds which descriptor):

* **status**: every child has one ``SOCK_SEQPACKET`` channel of its own to the supervisor,
  one CONTROL frame per datagram. A worker sends ``WorkerReady``; the front sends
  ``FrontReady`` and ``Stuck``. The supervisor knows the sender from the channel, never
  from the message (``pid`` fields are checked against it).
* **settings**: the same channel of the front, the other way: ``LiveSettings`` (SIGHUP)
  and ``Generation``.
* **bridge** (worker -> front): the payload of the HELLO frame is a ``Hello`` (it names
  the worker's async hooks and how many async calls it runs at once); a CONTROL
  frame carrying ``Failed`` precedes the REPLY of a call the plugin failed, and one
  carrying ``Handler`` precedes (and ``Failed``) the REPLY of every EVENT call;
  ``Concurrent`` says that a call the front routed as a sync one (an EVENT, or a hook
  the HELLO did not name) runs as an async task; ``Alive`` (call id 0), sent every
  ``ALIVE_INTERVAL`` seconds while a worker serves on its event loop, says the loop runs.
  DRAIN frames have no payload.
* **bridge** (front -> worker): besides DISPATCH/EVENT frames, a CONTROL frame carrying
  ``Cancel`` for an async call past its deadline (call id in the frame header).

Payloads are msgpack maps ``{"op": name, field: value...}``. Invariants:

* ``decode`` validates every field's type and range and returns one of the frozen
  dataclasses below; on ANY input that is not exactly such a message it raises
  ``ProtocolError`` and nothing else (unknown fields are ignored: an older reader of a
  newer sender). ``decode(encode(m)) == m`` for every valid message.
* ``decode_frame`` does the same for a whole datagram: exactly one CONTROL frame, no
  byte more or less. ``report`` writes one datagram and never raises.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Final

import msgpack

from tykworker.errors import ProtocolError
from tykworker.wire.frames import FrameDecoder, FrameKind, encode_frame

if TYPE_CHECKING:
    from tykworker.config import Settings

#: Largest control datagram a reader accepts (the biggest message, LiveSettings with many
#: per-hook deadlines, is a few hundred bytes).
MAX_DATAGRAM: Final = 65536
_MAX_U64: Final = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Hello:
    """Worker -> front, the first frame of a bridge connection: the worker is ready."""

    op: ClassVar[str] = "hello"
    pid: int
    generation: int
    index: int  # scoreboard slot
    #: Hook names (Dispatch) whose handler is an ``async def``: their calls run at once,
    #: up to ``async_capacity`` of them (``async_concurrency``), on the worker's loop.
    async_hooks: tuple[str, ...] = ()
    async_capacity: int = 1


@dataclass(frozen=True, slots=True)
class WorkerReady:
    """Worker -> supervisor: plugins imported, connected to the front."""

    op: ClassVar[str] = "ready"
    pid: int
    generation: int


@dataclass(frozen=True, slots=True)
class FrontReady:
    """Front -> supervisor: the public sockets are listening."""

    op: ClassVar[str] = "front_ready"
    pid: int


@dataclass(frozen=True, slots=True)
class Stuck:
    """Front -> supervisor: ``worker`` holds call ``call_id`` past its deadline."""

    op: ClassVar[str] = "stuck"
    pid: int  # the front's
    worker: int
    call_id: int
    hook: str
    elapsed: float


@dataclass(frozen=True, slots=True)
class Failed:
    """Worker -> front (bridge, call id in the frame header): the plugin failed the call;
    ``reason`` is the answer's reason code (metrics)."""

    op: ClassVar[str] = "failed"
    reason: str


@dataclass(frozen=True, slots=True)
class Handler:
    """Worker -> front (bridge, call id in the frame header), EVENT calls only: the handler
    name the ``coprocess.Event`` asked for, which the front never reads itself; it labels
    the call's metrics and logs. Dispatch calls never carry one (the front peeks their
    hook name from the Object's header)."""

    op: ClassVar[str] = "handler"
    name: str


@dataclass(frozen=True, slots=True)
class Concurrent:
    """Worker -> front (bridge, call id in the frame header): that call, sent as a sync
    one, runs as an async task (its REPLY comes later, perhaps after later calls')."""

    op: ClassVar[str] = "async"


@dataclass(frozen=True, slots=True)
class Alive:
    """Worker -> front (bridge, call id 0): its event loop ran just now (a heartbeat,
    every ``ALIVE_INTERVAL`` seconds while it serves on its loop): the front tells a
    blocked loop from slow async calls at their deadline."""

    op: ClassVar[str] = "alive"


#: Seconds between two ``Alive`` frames of a worker serving on its event loop.
ALIVE_INTERVAL: Final = 0.1


@dataclass(frozen=True, slots=True)
class Cancel:
    """Front -> worker (bridge, call id in the frame header): the async call is past its
    deadline (already answered): cancel its task and REPLY at once (empty payload), which
    tells the front that the worker's event loop still runs."""

    op: ClassVar[str] = "cancel"


@dataclass(frozen=True, slots=True)
class LiveSettings:
    """Supervisor -> front: the settings a SIGHUP applies without a restart
    (``config.LIVE_SETTINGS``)."""

    op: ClassVar[str] = "config"
    hook_timeout: float
    hook_timeout_for: Mapping[str, float]
    fail_open: tuple[str, ...]
    queue_size: int

    @classmethod
    def of(cls, settings: Settings) -> LiveSettings:
        return cls(
            float(settings.hook_timeout),
            dict(settings.hook_timeout_for),
            tuple(settings.fail_open),
            settings.queue_size,
        )

    def values(self) -> dict[str, Any]:
        """As ``config.apply_live_settings`` takes them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class Generation:
    """Supervisor -> front: the pool's current generation (health: only its workers, or
    newer ones, count). Sent on the channel, not read from the scoreboard, which plugin
    code can write."""

    op: ClassVar[str] = "generation"
    generation: int


Message = (
    Hello
    | WorkerReady
    | FrontReady
    | Stuck
    | Failed
    | Handler
    | Concurrent
    | Alive
    | Cancel
    | LiveSettings
    | Generation
)
_TYPES: Final[dict[str, type[Message]]] = {
    t.op: t
    for t in (
        Hello,
        WorkerReady,
        FrontReady,
        Stuck,
        Failed,
        Handler,
        Concurrent,
        Alive,
        Cancel,
        LiveSettings,
        Generation,
    )
}


# --- field checks: each returns the value as the dataclass holds it, or raises ----------
def _int(low: int, high: int = _MAX_U64) -> Callable[[object], int]:
    def check(value: object) -> int:
        if type(value) is not int or not low <= value <= high:
            raise ProtocolError(f"expected an integer in {low}..{high}, got {value!r:.80}")
        return value

    return check


def _number(value: object, low: float = 0.0) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ProtocolError(f"expected a number, got {value!r:.80}")
    if not math.isfinite(value) or value < low:
        raise ProtocolError(f"expected a finite number >= {low}, got {value!r:.80}")
    return float(value)


def _positive(value: object) -> float:
    number = _number(value)
    if number <= 0:
        raise ProtocolError(f"expected a positive number, got {value!r:.80}")
    return number


def _str(value: object) -> str:
    if type(value) is not str:
        raise ProtocolError(f"expected a string, got {value!r:.80}")
    return value


def _strings(value: object) -> tuple[str, ...]:
    if type(value) not in (list, tuple):
        raise ProtocolError(f"expected a list of strings, got {value!r:.80}")
    return tuple(_str(item) for item in value)  # type: ignore[attr-defined]


def _deadlines(value: object) -> dict[str, float]:
    if type(value) is not dict:
        raise ProtocolError(f"expected a map of deadlines, got {value!r:.80}")
    return {_str(k): _positive(v) for k, v in value.items()}


_PID: Final = _int(1, 2**31 - 1)
_CHECKS: Final[dict[type[Message], dict[str, Callable[[object], object]]]] = {
    Hello: {
        "pid": _PID,
        "generation": _int(1),
        "index": _int(0, 2**31 - 1),
        "async_hooks": _strings,
        "async_capacity": _int(1, 2**31 - 1),
    },
    WorkerReady: {"pid": _PID, "generation": _int(1)},
    FrontReady: {"pid": _PID},
    Stuck: {"pid": _PID, "worker": _PID, "call_id": _int(0), "hook": _str, "elapsed": _number},
    Failed: {"reason": _str},
    Handler: {"name": _str},
    Concurrent: {},
    Alive: {},
    Cancel: {},
    Generation: {"generation": _int(1)},
    LiveSettings: {
        "hook_timeout": _positive,
        "hook_timeout_for": _deadlines,
        "fail_open": _strings,
        "queue_size": _int(0, 2**31 - 1),
    },
}


# --- codec ------------------------------------------------------------------------------
def encode(message: Message) -> bytes:
    """The msgpack payload of ``message``."""
    body: dict[str, Any] = {"op": message.op}
    for f in fields(message):
        value = getattr(message, f.name)
        body[f.name] = dict(value) if isinstance(value, Mapping) else value
    return msgpack.packb(body)


def decode(payload: bytes | bytearray) -> Message:
    """The message in ``payload``; ``ProtocolError`` (only) for anything else."""
    try:
        body = msgpack.unpackb(payload, use_list=True, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises ValueError subclasses, TypeError, ...
        raise ProtocolError(f"undecodable control message: {exc!r:.200}") from None
    if type(body) is not dict:
        raise ProtocolError("control message is not a map")
    kind = _TYPES.get(body["op"]) if type(body.get("op")) is str else None
    if kind is None:
        raise ProtocolError(f"unknown control op {body.get('op')!r:.80}")
    values: dict[str, object] = {}
    for name, check in _CHECKS[kind].items():
        if name not in body:
            raise ProtocolError(f"{kind.op}: field {name!r} missing")
        try:
            values[name] = check(body[name])
        except ProtocolError as exc:
            raise ProtocolError(f"{kind.op}: field {name!r}: {exc}") from None
    return kind(**values)  # type: ignore[arg-type]


def encode_frame_of(message: Message, call_id: int = 0) -> bytes:
    """``message`` as one CONTROL frame (the bridge's ``Failed``, a status datagram)."""
    return encode_frame(FrameKind.CONTROL, call_id, encode(message))


def decode_frame(datagram: bytes) -> Message:
    """The message of a datagram holding exactly one CONTROL frame; ``ProtocolError``
    (only) for a partial, oversized or malformed one, or trailing bytes."""
    decoder = FrameDecoder(MAX_DATAGRAM)
    decoder.feed(datagram)
    frame = decoder.next_frame()
    if frame is None:
        raise ProtocolError(f"partial control frame ({len(datagram)} bytes)")
    if decoder.buffered:
        raise ProtocolError(f"{decoder.buffered} bytes after the control frame")
    if frame.kind != FrameKind.CONTROL:
        raise ProtocolError(f"expected a CONTROL frame, got {frame.kind.name}")
    return decode(frame.payload)


def report(fd: int, message: Message) -> bool:
    """Send ``message`` as one datagram on the channel ``fd``. Never raises: False when
    the channel is gone or full (the caller logs; a full channel drops the message
    rather than block the sender's loop when ``fd`` is non-blocking)."""
    try:
        os.write(fd, encode_frame_of(message))
    except OSError:
        return False
    return True


__all__ = [
    "ALIVE_INTERVAL",
    "MAX_DATAGRAM",
    "Alive",
    "Cancel",
    "Concurrent",
    "Failed",
    "FrontReady",
    "Generation",
    "Handler",
    "Hello",
    "LiveSettings",
    "Message",
    "Stuck",
    "WorkerReady",
    "decode",
    "decode_frame",
    "encode",
    "encode_frame_of",
    "report",
]
