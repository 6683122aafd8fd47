"""sd_notify through the real server: READY, RELOADING with MONOTONIC_USEC, STATUS,
STOPPING and WATCHDOG, read from a real datagram socket set as NOTIFY_SOCKET."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from .conftest import wait_for

pytestmark = pytest.mark.integration


def test_full_sighup_cycle_and_stop(start_server):
    server = start_server("--workers", "2", ready=False)
    ready = server.wait_notify("READY=1")
    assert "STATUS=ok: 2/2 workers ready, generation 1" in ready
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    server.signal(signal.SIGHUP)
    reloading = server.wait_notify("RELOADING=1").splitlines()
    stamp = int(next(x for x in reloading if x.startswith("MONOTONIC_USEC=")).split("=")[1])
    assert before <= stamp <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert "STATUS=reload ready; ok: 2/2 workers ready, generation 2" in server.wait_notify(
        "READY=1"
    )
    server.signal(signal.SIGTERM)
    server.wait_notify("STOPPING=1")
    assert server.proc.wait(30) == 0


def test_watchdog_pings_while_the_loop_runs(start_server):
    server = start_server("--workers", "1", env={"WATCHDOG_USEC": "400000"})
    for _ in range(3):
        server.wait_notify("WATCHDOG=1", timeout=5)


def test_a_systemd_that_does_not_read_never_blocks_the_supervisor(start_server):
    """systemd's queue full (it is busy, or stuck): a reload goes through without the
    supervisor ever blocking in a send, and the state changes systemd could not take are
    delivered, in order, once it reads again."""
    server = start_server("--workers", "1")
    supervisor = server.proc.pid
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with filler:
        filled = 0
        while True:
            try:
                filler.sendto(b"STATUS=filler", socket.MSG_DONTWAIT, server.notify_path)
            except BlockingIOError:
                break
            filled += 1
    assert filled
    server.signal(signal.SIGHUP)
    states = []

    def reloaded() -> bool:
        states.append(Path(f"/proc/{supervisor}/wchan").read_text())
        return "generation 2 ready" in server.log()

    wait_for(reloaded, what="reload to generation 2")
    assert "unix_wait_for_peer" not in states  # never blocked waiting for systemd
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"
    assert server.wait_notify("RELOADING=1")  # systemd reads again: nothing was lost
    assert "STATUS=reload ready; ok: 1/1 workers ready, generation 2" in server.wait_notify(
        "READY=1"
    )
