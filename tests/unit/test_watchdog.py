"""The worker's watchdog thread (tykworker/worker/watchdog.py): its ticks, which set the
title of a call in progress, run while the parent lives, and a failing tick ends the ticks,
never the watch."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest

from tykworker.worker import watchdog


def _wait(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_ticks_run_on_the_thread_while_the_parent_lives():
    threads: list[threading.Thread] = []
    thread = watchdog.start(os.getppid(), 60.0, lambda: threads.append(threading.current_thread()))
    _wait(lambda: len(threads) >= 2)
    assert set(threads) == {thread} and thread.is_alive()


def test_a_failing_tick_is_logged_once_and_the_watch_goes_on(caplog: pytest.LogCaptureFixture):
    calls: list[int] = []

    def tick() -> None:
        calls.append(1)
        raise RuntimeError("title broke")

    with caplog.at_level(logging.ERROR, logger="tykworker.worker"):
        thread = watchdog.start(os.getppid(), 60.0, tick)
        _wait(lambda: "watchdog tick failed" in caplog.text)
        clock: list[int] = []  # a second watch, same period: its ticks mark time passing
        watchdog.start(os.getppid(), 60.0, lambda: clock.append(1))
        _wait(lambda: len(clock) >= 3)
    assert calls == [1] and thread.is_alive()
    assert caplog.text.count("watchdog tick failed") == 1
