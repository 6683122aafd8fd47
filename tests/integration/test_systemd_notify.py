"""sd_notify through the real server: READY, RELOADING with MONOTONIC_USEC, STATUS,
STOPPING and WATCHDOG, read from a real datagram socket set as NOTIFY_SOCKET."""

from __future__ import annotations

import signal
import time

import pytest

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
