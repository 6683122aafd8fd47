"""systemd service notification (``sd_notify``) and watchdog, without libsystemd.

systemd starts a ``Type=notify``/``Type=notify-reload`` service with ``$NOTIFY_SOCKET`` set
to an ``AF_UNIX`` datagram socket: a filesystem path (``/run/systemd/notify``) or, with a
leading ``@``, a name in the Linux abstract namespace. The service reports its state by
sending newline-separated ``KEY=VALUE`` assignments in one datagram:

* ``READY=1`` once it serves (systemd then considers the start finished; with
  ``Type=notify-reload`` also once a reload has finished);
* ``RELOADING=1`` plus ``MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>`` when a reload starts
  (``Type=notify-reload`` requires the timestamp, systemd >= 253);
* ``STOPPING=1`` when shutdown starts; ``STATUS=<text>`` for ``systemctl status``;
* ``WATCHDOG=1`` at least every ``$WATCHDOG_USEC`` µs when ``WatchdogSec=`` is set, or
  systemd kills and restarts the service. ``$WATCHDOG_PID``, when set, names the one
  process the watchdog applies to.

Only the supervisor notifies (the unit says ``NotifyAccess=main``, so datagrams from
workers or the front would be ignored anyway).

Invariants:
* Notifying never raises: without ``$NOTIFY_SOCKET`` (not under systemd), or with a
  broken socket, a send returns ``False`` and the first such failure is logged at DEBUG
  level; the service carries on.
* Notifying never blocks the caller: every send is non-blocking. The receiver's queue
  is short (``net.unix.max_dgram_qlen`` is 10 unless systemd's sysctl raised it to 512)
  and a busy or stuck systemd may not read it for seconds; when it is full, state changes
  (READY, RELOADING, STOPPING), which systemd must not miss, are kept in order (at most
  ``MAX_KEPT``, the oldest dropped beyond) and sent by ``flush`` once there is room:
  the caller watches ``waiting_socket()`` for writability in its own event loop. STATUS
  and WATCHDOG, which the next one supersedes, fail at once and are never kept.
* ``Notifier`` keeps one socket open for its lifetime (the supervisor sends a watchdog
  ping per loop turn); the module-level functions share one such notifier, recreated when
  ``$NOTIFY_SOCKET`` changes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Final

log = logging.getLogger("tykworker.systemd")

#: The supervisor pings at most this many times per watchdog interval.
WATCHDOG_PINGS_PER_INTERVAL: Final = 4
#: State changes kept while systemd's queue is full (a reload is two: RELOADING, READY).
MAX_KEPT: Final = 8


def monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` in microseconds, the clock systemd expects in MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def notify_address(value: str | None) -> str | None:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value, or None if unusable.

    ``@name`` becomes the abstract address ``\\0name``; an absolute path is used as is.
    Anything else (empty, relative, systemd 254's ``vsock:`` form) gives None.
    """
    if not value:
        return None
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog interval in seconds, or None when no watchdog applies to this process.

    Reads ``$WATCHDOG_USEC`` (a positive integer); if ``$WATCHDOG_PID`` is set it must
    equal ``os.getpid()`` (it would name the parent, e.g., in a forked child). Invalid
    values give None, never an exception.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000


def _encode(lines: tuple[str, ...]) -> bytes:
    for line in lines:
        if "\n" in line or "=" not in line:
            raise ValueError(f"not a single KEY=VALUE assignment: {line!r}")
    return "\n".join(lines).encode()


def _one_line(text: str) -> str:
    # A newline inside STATUS would start a new assignment: keep the text on one line.
    return " ".join(text.splitlines())


class Notifier:
    """One service's channel to systemd; keeps its datagram socket open (connected to
    ``$NOTIFY_SOCKET``, so that it can be polled for room in systemd's queue).

    ``environ`` defaults to ``os.environ`` read once, at construction. ``clock``
    (seconds, monotonic) is only used to rate-limit watchdog pings.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        self.socket_name: str | None = env.get("NOTIFY_SOCKET") or None
        self._address = notify_address(self.socket_name)
        #: Watchdog interval in seconds, or None when systemd set no watchdog for us.
        self.watchdog_interval: float | None = watchdog_interval(env)
        self._clock = clock
        self._kept: deque[bytes] = deque()  # state changes waiting for room, in order
        self._last_ping: float | None = None
        self._sock: socket.socket | None = None
        self._failure_logged = False
        self._lock = threading.Lock()  # the front/supervisor may notify from two threads

    @property
    def enabled(self) -> bool:
        """True if ``$NOTIFY_SOCKET`` named a usable address."""
        return self._address is not None

    def notify(self, *lines: str, keep: bool = False) -> bool:
        """Send the assignments ``lines`` (``"READY=1"``, ...) in one datagram, without
        blocking.

        With ``keep``, a datagram that finds systemd's queue full (or state changes kept
        before it still waiting) is kept and sent, in order, by ``flush``.

        Returns True if the datagram was queued on systemd's socket now, False if it was
        kept for later, there is no usable ``$NOTIFY_SOCKET`` or sending failed (logged
        once, at DEBUG). Raises ``ValueError`` only for a malformed line (a bug in the
        caller): one without ``=`` or containing a newline.
        """
        data = _encode(lines)
        if self._address is None:
            self._failed(
                "NOTIFY_SOCKET is not set or unusable (%r): not notifying systemd", self.socket_name
            )
            return False
        with self._lock:
            if keep and self._kept:
                self._keep_locked(data)
                self._flush_locked()
                return False
            try:
                self._send_locked(data)
            except BlockingIOError:
                if keep:
                    self._keep_locked(data)
                self._failed("sd_notify to %s: its queue is full", self.socket_name)
                return False
            except OSError as exc:
                self._failed("sd_notify to %s failed: %s", self.socket_name, exc)
                return False
        return True

    def waiting_socket(self) -> socket.socket | None:
        """The socket to watch for writability while state changes are kept (call
        ``flush`` when it is writable), or None when nothing waits."""
        with self._lock:
            if self._kept and self._sock is None:  # closed by a failed STATUS meanwhile
                self._flush_locked()
            return self._sock if self._kept else None

    def flush(self) -> bool:
        """Send the kept state changes, in order, as far as systemd's queue has room;
        never blocks. True when none is left waiting."""
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> bool:
        while self._kept:
            try:
                self._send_locked(self._kept[0])
            except BlockingIOError:
                return False
            except OSError as exc:  # systemd gone: what it missed is moot
                self._failed("sd_notify to %s failed: %s", self.socket_name, exc)
                self._kept.clear()
                return True
            self._kept.popleft()
        return True

    def _keep_locked(self, data: bytes) -> None:
        if len(self._kept) >= MAX_KEPT:
            dropped = self._kept.popleft()
            log.warning("systemd is not reading its notifications: dropped %r", dropped[:40])
        self._kept.append(data)

    def _send_locked(self, data: bytes) -> None:
        """One non-blocking send; raises ``BlockingIOError`` (queue full, socket kept) or
        another ``OSError`` (socket closed: the next send reconnects)."""
        try:
            if self._sock is None:
                self._sock = self._open()
            self._sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            raise
        except OSError:
            self._close_locked()
            raise

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (start-up or a reload finished), with an optional STATUS= line."""
        return self._state_change("READY=1", status)

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC=now: a reload started; send ``ready`` after."""
        lines = ["RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}"]
        if status is not None:
            lines.append("STATUS=" + _one_line(status))
        return self.notify(*lines, keep=True)

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutdown started."""
        return self._state_change("STOPPING=1", status)

    def status(self, text: str) -> bool:
        """STATUS=<text>, shown by ``systemctl status`` (newlines become spaces)."""
        return self.notify("STATUS=" + _one_line(text))

    def watchdog_ping(self, *, force: bool = False) -> bool:
        """WATCHDOG=1 if a watchdog applies and the last ping is older than a quarter of
        the interval (or ``force``).

        Call it from the loop whose progress it vouches for, as often as convenient: at
        most ``WATCHDOG_PINGS_PER_INTERVAL`` datagrams go out per interval. Returns True
        if a ping was sent or one was sent recently enough, False if no watchdog applies
        or sending failed.
        """
        interval = self.watchdog_interval
        if interval is None:
            return False
        now = self._clock()
        due = interval / WATCHDOG_PINGS_PER_INTERVAL
        if not force and self._last_ping is not None and now - self._last_ping < due:
            return True
        if not self.notify("WATCHDOG=1"):
            return False
        self._last_ping = now
        return True

    def close(self) -> None:
        """Close the socket; a later notify opens a new one."""
        with self._lock:
            self._close_locked()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _state_change(self, line: str, status: str | None) -> bool:
        if status is None:
            return self.notify(line, keep=True)
        return self.notify(line, "STATUS=" + _one_line(status), keep=True)

    def _open(self) -> socket.socket:
        # Connected: poll() then reports room in systemd's queue (an unconnected
        # datagram socket is always "writable"), and a vanished receiver is an error.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.connect(self._address or "")
        except OSError:
            sock.close()
            raise
        return sock

    def _close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _failed(self, message: str, *args: object) -> None:
        if not self._failure_logged:
            self._failure_logged = True
            log.debug(message, *args)


# --- module-level helpers sharing one notifier ------------------------------------------

_shared: Notifier | None = None
_shared_lock = threading.Lock()


def _notifier() -> Notifier:
    global _shared
    with _shared_lock:
        current = os.environ.get("NOTIFY_SOCKET") or None
        if _shared is None or _shared.socket_name != current:
            if _shared is not None:
                _shared.close()
            _shared = Notifier()
        return _shared


def notify(*lines: str) -> bool:
    """``Notifier.notify`` on the shared notifier for the current ``$NOTIFY_SOCKET``."""
    return _notifier().notify(*lines)


def ready(status: str | None = None) -> bool:
    """READY=1 (and STATUS=); see ``Notifier.ready``."""
    return _notifier().ready(status)


def reloading(status: str | None = None) -> bool:
    """RELOADING=1 + MONOTONIC_USEC; see ``Notifier.reloading``."""
    return _notifier().reloading(status)


def stopping(status: str | None = None) -> bool:
    """STOPPING=1; see ``Notifier.stopping``."""
    return _notifier().stopping(status)


def status(text: str) -> bool:
    """STATUS=<text>; see ``Notifier.status``."""
    return _notifier().status(text)


def watchdog_ping() -> bool:
    """Send WATCHDOG=1 now (no rate limit, unlike ``Notifier.watchdog_ping``)."""
    return _notifier().notify("WATCHDOG=1")


def close() -> None:
    """Close the shared notifier's socket (the next module-level call reopens one)."""
    with _shared_lock:
        if _shared is not None:
            _shared.close()
