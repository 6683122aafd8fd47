"""The front's connection guard (front/guard.py): the cap keeps the bridge's reserve,
evicts the oldest connection still in its handshake, refuses when none is; ticks report
why connections were closed, once per reason."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tykworker.front.guard import Guard, default_cap
from tykworker.front.h2.state import BufferPool


class Fake:
    def __init__(self, handshaking: bool, reason: str | None = None) -> None:
        self.handshaking = handshaking
        self.reason = reason
        self.evicted = False

    def tick(self, now: float) -> str | None:
        return self.reason

    def evict(self) -> None:
        self.evicted = True


def guard(cap: int) -> Guard:
    return Guard(cap, 10.0, 600.0, 60.0, BufferPool(1 << 20))


@pytest.mark.parametrize(
    ("limit", "workers", "cap"), [(1024, 2, 768), (256, 1, 188), (1 << 20, 64, 786432), (80, 4, 16)]
)
def test_default_cap_keeps_descriptors_for_the_bridge(limit: int, workers: int, cap: int) -> None:
    assert default_cap(limit, workers) == cap


def test_the_cap_evicts_the_oldest_handshake_then_refuses() -> None:
    async def main() -> None:
        g = guard(2)
        stalled, gateway, other = Fake(True), Fake(False), Fake(False)
        assert g.admit(stalled) and g.admit(gateway)
        assert g.admit(other)  # the stalled one makes room
        assert stalled.evicted and list(g.connections) == [gateway, other]
        late = Fake(True)
        assert not g.admit(late)  # nobody in a handshake: refused
        assert (g.evicted, g.refused, late.evicted) == (1, 1, False)
        g.leave(gateway)
        assert g.admit(late) and len(g.connections) == 2
        g.stop()

    asyncio.run(main())


def test_a_tick_logs_each_reason_once_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        g = guard(10)
        for _ in range(3):
            g.admit(Fake(True, "no HTTP/2 preface and SETTINGS within 10 s"))
        g.admit(Fake(False))
        g._sweep()
        g.stop()

    with caplog.at_level(logging.WARNING, "tykworker.front"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records] == [
        "closed 3 public connection(s): no HTTP/2 preface and SETTINGS within 10 s"
    ]
