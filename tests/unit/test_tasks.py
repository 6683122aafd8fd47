"""worker/tasks.py: every async call ends in exactly one of complete or cancel, and a
cancelled call leaves nothing behind, whatever its hook does with the cancellation."""

from __future__ import annotations

import asyncio

from tykworker import logs
from tykworker.worker.tasks import Tasks


def _record(call_id: int) -> logs.ActiveCall:
    return logs.ActiveCall(call_id, f"hook{call_id}")


def test_a_finished_call_completes_once_with_its_own_record() -> None:
    done: list[tuple[int, bytes, str]] = []
    tasks = Tasks(lambda kind, cid, rec, payload, reply: done.append((cid, reply, rec.hook)))

    async def hook(n: int) -> bytes:
        assert logs.current_call().call_id == n  # its own record, set in its task
        await asyncio.sleep(0)
        return b"reply%d" % n

    for n in (1, 2):
        tasks.start(1, n, _record(n), b"", hook(n))
    assert set(tasks.live) == {1, 2}
    tasks.loop().run_until_complete(asyncio.sleep(0.01))
    assert sorted(done) == [(1, b"reply1", "hook1"), (2, b"reply2", "hook2")]
    assert not tasks.live and not tasks.busy
    tasks.close()


def test_a_cancelled_call_never_completes_even_if_its_hook_swallows_the_cancel() -> None:
    done: list[int] = []
    tasks = Tasks(lambda kind, cid, rec, payload, reply: done.append(cid))
    release = asyncio.Event()

    async def stubborn() -> bytes:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await release.wait()  # goes on after its cancellation
        return b"late"

    async def polite() -> bytes:
        await asyncio.sleep(60)
        return b"never"

    tasks.start(1, 1, _record(1), b"", stubborn())
    tasks.start(1, 2, _record(2), b"", polite())
    loop = tasks.loop()
    loop.run_until_complete(asyncio.sleep(0))
    assert tasks.cancel(1) and tasks.cancel(2)
    assert not tasks.cancel(2)  # once
    loop.run_until_complete(asyncio.sleep(0.01))
    assert set(tasks.live) == {1} and tasks.cancelled == {1}  # still running, counted
    release.set()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert not tasks.live and not tasks.cancelled and done == []
    assert not tasks.cancel(3)  # unknown: it replied already
    tasks.close()


def test_close_cancels_what_is_left() -> None:
    seen: list[str] = []
    tasks = Tasks(lambda *args: None)

    async def forever() -> bytes:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return b""

    tasks.start(1, 1, _record(1), b"", forever())
    tasks.loop().run_until_complete(asyncio.sleep(0))
    tasks.close()
    assert seen == ["cancelled"] and not tasks.live
