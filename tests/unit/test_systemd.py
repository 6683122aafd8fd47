"""sd_notify (``tykworker.systemd``) against a real AF_UNIX datagram socket.

Each test binds its own receiver (a short filesystem path or an abstract name), points
``NOTIFY_SOCKET`` at it and reads what arrived. A datagram is queued on the receiver when
``sendto`` returns, so reads need no waiting; the receive timeout only turns a missing
datagram into a failure instead of a hang.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tykworker.system import systemd
from tykworker.system.systemd import Notifier, monotonic_usec, notify_address, watchdog_interval


class Receiver:
    """The systemd side: a bound datagram socket."""

    def __init__(self, env_value: str, address: str) -> None:
        self.env_value = env_value  # what NOTIFY_SOCKET holds
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5)

    def recv(self) -> list[str]:
        return self.sock.recv(65536).decode().split("\n")

    def pending(self) -> list[list[str]]:
        """Every datagram already queued, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(65536).decode().split("\n"))
        except BlockingIOError:
            return out
        finally:
            self.sock.settimeout(5)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="tw-") as name:
        yield Path(name)


@pytest.fixture
def path_receiver(short_dir: Path) -> Iterator[Receiver]:
    path = str(short_dir / "notify")
    receiver = Receiver(path, path)
    yield receiver
    receiver.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"tykworker-test-{uuid.uuid4().hex}"
    receiver = Receiver("@" + name, "\0" + name)
    yield receiver
    receiver.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> Receiver:
    fixture = "path_receiver" if request.param == "path" else "abstract_receiver"
    result: Receiver = request.getfixturevalue(fixture)
    return result


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(key, raising=False)
    yield
    systemd.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- addresses and the watchdog environment --------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@abstract/name", "\0abstract/name"),
        ("@", None),
        ("", None),
        (None, None),
        ("relative/path", None),
        ("vsock:2:1234", None),
    ],
)
def test_notify_address(value: str | None, expected: str | None) -> None:
    assert notify_address(value) == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000"}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "self"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected
    assert Notifier(env).watchdog_interval == expected


def test_watchdog_interval_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 2.0
    assert Notifier().watchdog_interval == 2.0


# --- sending ------------------------------------------------------------------------


def test_ready_with_status(receiver: Receiver) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": receiver.env_value})
    assert notifier.enabled
    assert notifier.ready("4 workers idle, generation 1")
    assert receiver.recv() == ["READY=1", "STATUS=4 workers idle, generation 1"]
    assert notifier.ready()
    assert receiver.recv() == ["READY=1"]
    notifier.close()


def test_reloading_sends_monotonic_usec(receiver: Receiver) -> None:
    with Notifier({"NOTIFY_SOCKET": receiver.env_value}) as notifier:
        before = monotonic_usec()
        assert notifier.reloading()
        after = monotonic_usec()
    lines = receiver.recv()
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert len(lines) == 2


def test_monotonic_usec_is_clock_monotonic_in_microseconds() -> None:
    import time

    ns_before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    usec = monotonic_usec()
    ns_after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert ns_before // 1000 <= usec <= ns_after // 1000


def test_reloading_with_status_then_ready(receiver: Receiver) -> None:
    with Notifier({"NOTIFY_SOCKET": receiver.env_value}) as notifier:
        assert notifier.reloading("reloading: generation 2 starting")
        assert notifier.ready("reload ok")
    reloading, ready = receiver.recv(), receiver.recv()
    assert reloading[0] == "RELOADING=1"
    assert reloading[2] == "STATUS=reloading: generation 2 starting"
    assert ready == ["READY=1", "STATUS=reload ok"]


def test_stopping_and_status(receiver: Receiver) -> None:
    with Notifier({"NOTIFY_SOCKET": receiver.env_value}) as notifier:
        assert notifier.stopping()
        assert notifier.stopping("draining 3 calls")
        assert notifier.status("2 busy / 2 idle")
    assert receiver.recv() == ["STOPPING=1"]
    assert receiver.recv() == ["STOPPING=1", "STATUS=draining 3 calls"]
    assert receiver.recv() == ["STATUS=2 busy / 2 idle"]


def test_status_text_stays_on_one_line(receiver: Receiver) -> None:
    with Notifier({"NOTIFY_SOCKET": receiver.env_value}) as notifier:
        assert notifier.status("degraded\nREADY=1\r\nplugin failed")
        assert notifier.ready("a\nb")
    assert receiver.recv() == ["STATUS=degraded READY=1 plugin failed"]
    assert receiver.recv() == ["READY=1", "STATUS=a b"]


def test_notify_sends_all_lines_in_one_datagram(receiver: Receiver) -> None:
    with Notifier({"NOTIFY_SOCKET": receiver.env_value}) as notifier:
        assert notifier.notify("STATUS=x", "MAINPID=1", "EXTEND_TIMEOUT_USEC=5000000")
    assert receiver.pending() == [["STATUS=x", "MAINPID=1", "EXTEND_TIMEOUT_USEC=5000000"]]


@pytest.mark.parametrize("line", ["READY=1\nSTOPPING=1", "READY", ""])
def test_malformed_lines_are_a_caller_bug(receiver: Receiver, line: str) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": receiver.env_value})
    with notifier, pytest.raises(ValueError, match="KEY=VALUE"):
        notifier.notify("STATUS=ok", line)
    assert receiver.pending() == []


def test_notifier_keeps_one_socket_open(receiver: Receiver) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": receiver.env_value})
    got = []
    sockets = set()
    for i in range(50):
        assert notifier.status(f"call {i}")
        sockets.add(notifier._sock)  # the same open socket every time
        if i % 5 == 4:  # the receive queue may hold only 10 datagrams
            got += receiver.pending()
    (sock,) = sockets
    assert sock is not None and sock.fileno() >= 0
    assert got == [[f"STATUS=call {i}"] for i in range(50)]
    notifier.close()
    assert sock.fileno() == -1  # closed, not leaked
    # (Counting the process's fds here would race with other tests' sockets being
    # collected; the socket object itself is what the notifier owns.)
    # A closed notifier reopens on the next send.
    assert notifier.status("again")
    assert receiver.recv() == ["STATUS=again"]
    notifier.close()


def test_environ_is_read_once_at_construction(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.env_value)
    notifier = Notifier()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notifier.ready()
    assert receiver.recv() == ["READY=1"]
    notifier.close()


# --- failures never raise -----------------------------------------------------------


def test_without_notify_socket_returns_false_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tykworker.systemd")
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.reloading()
    assert not notifier.stopping()
    assert not notifier.status("x")
    assert not notifier.notify("WATCHDOG=1")
    records = [r for r in caplog.records if r.name == "tykworker.systemd"]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG
    assert "NOTIFY_SOCKET" in records[0].getMessage()


@pytest.mark.parametrize("value", ["relative.sock", "@", "vsock:1:2"])
def test_unusable_notify_socket_returns_false(value: str) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert not notifier.ready()


def test_missing_listener_returns_false_then_recovers(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tykworker.systemd")
    path = str(short_dir / "later")
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert not notifier.ready("nobody listens")
    assert not notifier.status("still nobody")
    failures = [r for r in caplog.records if r.name == "tykworker.systemd"]
    assert len(failures) == 1
    assert failures[0].levelno == logging.DEBUG
    assert path in failures[0].getMessage()

    receiver = Receiver(path, path)
    try:
        assert notifier.ready("now")
        assert receiver.recv() == ["READY=1", "STATUS=now"]
    finally:
        receiver.close()
        notifier.close()


def test_receiver_going_away_returns_false_then_recovers(short_dir: Path) -> None:
    path = str(short_dir / "notify")
    first = Receiver(path, path)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.status("one")
    assert first.recv() == ["STATUS=one"]
    first.close()
    os.unlink(path)
    assert not notifier.status("lost")
    second = Receiver(path, path)  # systemd re-executed, same path
    try:
        assert notifier.status("two")
        assert second.recv() == ["STATUS=two"]
    finally:
        second.close()
        notifier.close()


def test_path_that_is_not_a_socket_returns_false(short_dir: Path) -> None:
    path = short_dir / "plain-file"
    path.write_text("")
    with Notifier({"NOTIFY_SOCKET": str(path)}) as notifier:
        assert not notifier.ready()


def fill(receiver: Receiver, notifier: Notifier) -> int:
    """Send STATUS datagrams until the receiver's queue is full; return how many fit."""
    receiver.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    for sent in range(100_000):
        if not notifier.status("x" * 200):
            return sent
    raise AssertionError("the receive queue never filled up")


@pytest.mark.timeout(10)
def test_full_queue_fails_status_and_watchdog_at_once(abstract_receiver: Receiver) -> None:
    # Were STATUS/WATCHDOG to wait for room, this test would hang.
    clock = FakeClock()
    env = {"NOTIFY_SOCKET": abstract_receiver.env_value, "WATCHDOG_USEC": "1000000"}
    with Notifier(env, clock=clock) as notifier:
        sent = fill(abstract_receiver, notifier)
        assert sent > 0
        assert not notifier.status("dropped")
        assert not notifier.notify("STATUS=dropped")
        assert not notifier.watchdog_ping()
        # Once systemd reads again, notifying works again.
        assert len(abstract_receiver.pending()) == sent
        assert notifier.watchdog_ping()
        assert notifier.status("caught up")
    assert abstract_receiver.pending() == [["WATCHDOG=1"], ["STATUS=caught up"]]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("method", ["ready", "reloading", "stopping"])
def test_full_queue_keeps_a_state_change_for_flush(
    abstract_receiver: Receiver, method: str
) -> None:
    first = {"ready": "READY=1", "reloading": "RELOADING=1", "stopping": "STOPPING=1"}[method]
    with Notifier({"NOTIFY_SOCKET": abstract_receiver.env_value}) as notifier:
        sent = fill(abstract_receiver, notifier)
        assert notifier.waiting_socket() is None
        assert not getattr(notifier, method)()  # never waits: kept instead
        waiting = notifier.waiting_socket()
        assert waiting is not None
        assert not notifier.flush()  # still no room
        assert select.select([], [waiting], [], 0)[1] == []  # not writable: nothing to poll
        assert len(abstract_receiver.pending()) == sent  # systemd reads again
        assert select.select([], [waiting], [], 5)[1] == [waiting]
        assert notifier.flush()
        assert notifier.waiting_socket() is None
    assert abstract_receiver.recv()[0] == first


@pytest.mark.timeout(10)
def test_kept_state_changes_go_out_in_order_and_are_bounded(
    abstract_receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    with Notifier({"NOTIFY_SOCKET": abstract_receiver.env_value}) as notifier:
        sent = fill(abstract_receiver, notifier)
        for n in range(systemd.MAX_KEPT + 2):
            assert not notifier.ready(f"r{n}")
        assert not notifier.status("superseded")  # STATUS is never kept
        assert len(abstract_receiver.pending()) == sent
        # Later state changes follow those kept, even once there is room.
        assert not notifier.stopping()
        assert notifier.flush()
    # r0, r1 dropped for r8, r9, then r2 for STOPPING: the latest MAX_KEPT, in order.
    expected = [["READY=1", f"STATUS=r{n}"] for n in range(3, systemd.MAX_KEPT + 2)]
    assert abstract_receiver.pending() == [*expected, ["STOPPING=1"]]
    assert "dropped" in caplog.text


# --- watchdog -----------------------------------------------------------------------


def test_watchdog_ping_is_rate_limited_to_a_quarter_interval(receiver: Receiver) -> None:
    clock = FakeClock()
    env = {"NOTIFY_SOCKET": receiver.env_value, "WATCHDOG_USEC": "4000000"}
    with Notifier(env, clock=clock) as notifier:
        assert notifier.watchdog_interval == 4.0
        assert notifier.watchdog_ping()
        assert receiver.pending() == [["WATCHDOG=1"]]

        clock.now += 0.99  # not due yet: no datagram, but the watchdog is fed
        assert notifier.watchdog_ping()
        assert receiver.pending() == []

        clock.now += 0.01  # interval / 4 after the last ping
        assert notifier.watchdog_ping()
        assert receiver.pending() == [["WATCHDOG=1"]]

        assert notifier.watchdog_ping(force=True)
        assert receiver.pending() == [["WATCHDOG=1"]]


def test_watchdog_ping_without_watchdog_sends_nothing(receiver: Receiver) -> None:
    with Notifier({"NOTIFY_SOCKET": receiver.env_value}) as notifier:
        assert notifier.watchdog_interval is None
        assert not notifier.watchdog_ping()
        assert not notifier.watchdog_ping(force=True)
    assert receiver.pending() == []


def test_watchdog_for_another_pid_sends_nothing(receiver: Receiver) -> None:
    env = {
        "NOTIFY_SOCKET": receiver.env_value,
        "WATCHDOG_USEC": "1000000",
        "WATCHDOG_PID": str(os.getpid() + 1),
    }
    with Notifier(env) as notifier:
        assert not notifier.watchdog_ping()
    assert receiver.pending() == []


def test_failed_watchdog_ping_is_retried_on_the_next_call(short_dir: Path) -> None:
    clock = FakeClock()
    path = str(short_dir / "wd")
    with Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"}, clock=clock) as notifier:
        assert not notifier.watchdog_ping()  # nobody listening yet
        receiver = Receiver(path, path)
        try:
            # Not rate-limited by the failed attempt: it goes out at once.
            assert notifier.watchdog_ping()
            assert receiver.pending() == [["WATCHDOG=1"]]
        finally:
            receiver.close()


# --- module-level helpers -----------------------------------------------------------


def test_module_functions_use_notify_socket(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.env_value)
    assert systemd.ready("up")
    assert systemd.status("busy")
    assert systemd.watchdog_ping()
    assert systemd.watchdog_ping()  # no rate limit at module level
    assert systemd.reloading()
    assert systemd.stopping()
    assert systemd.notify("STATUS=raw")
    got = receiver.pending()
    assert got[:4] == [["READY=1", "STATUS=up"], ["STATUS=busy"], ["WATCHDOG=1"], ["WATCHDOG=1"]]
    assert got[4][0] == "RELOADING=1"
    assert got[4][1].startswith("MONOTONIC_USEC=")
    assert got[5:] == [["STOPPING=1"], ["STATUS=raw"]]


def test_module_functions_follow_a_changed_notify_socket(
    path_receiver: Receiver, abstract_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_receiver.env_value)
    assert systemd.status("first")
    monkeypatch.setenv("NOTIFY_SOCKET", abstract_receiver.env_value)
    assert systemd.status("second")
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not systemd.status("third")
    assert path_receiver.pending() == [["STATUS=first"]]
    assert abstract_receiver.pending() == [["STATUS=second"]]


def test_module_functions_without_notify_socket_return_false() -> None:
    assert not systemd.ready()
    assert not systemd.reloading()
    assert not systemd.stopping()
    assert not systemd.status("x")
    assert not systemd.watchdog_ping()
    assert not systemd.notify("READY=1")


def test_socket_setup_failure_returns_false_without_leaking(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": receiver.env_value})
    fds = open_fds()
    with monkeypatch.context() as patch:
        patch.setattr(socket, "socket", _BrokenSocket)  # connect() fails
        assert not notifier.ready()
    assert open_fds() == fds
    assert notifier.ready()
    assert receiver.recv() == ["READY=1"]
    notifier.close()


class _BrokenSocket(socket.socket):
    def connect(self, address: object) -> None:
        raise OSError(111, "Connection refused")
