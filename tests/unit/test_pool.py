"""Pool planning on a fake clock: spawn, backoff, timeouts, reload generations, stop."""

from __future__ import annotations

import logging
import signal

from tykworker.supervisor.pool import (
    BACKOFF_MAX,
    BACKOFF_START,
    Exit,
    Log,
    Phase,
    Pool,
    PoolAction,
    ReloadOutcome,
    SendSignal,
    SpawnFront,
    SpawnWorker,
)


def outcomes(actions: list[PoolAction]) -> list[ReloadOutcome]:
    return [a for a in actions if isinstance(a, ReloadOutcome)]


def signals(actions: list[PoolAction]) -> list[SendSignal]:
    return [a for a in actions if isinstance(a, SendSignal)]


def boot(target: int = 2) -> tuple[Pool, list[int]]:
    pool = Pool(target=target, graceful_timeout=5)
    actions = pool.plan(0)
    assert SpawnFront() in actions
    assert [a for a in actions if isinstance(a, SpawnWorker)] == [
        SpawnWorker(s, 1) for s in range(target)
    ]
    pool.spawned(100, 0, 0, 0)
    pool.ready(100)
    pids = []
    for seat in range(target):
        pid = 200 + seat
        pool.spawned(pid, 1, seat, 0)
        pool.ready(pid)
        pids.append(pid)
    assert pool.plan(0) == []
    assert pool.phase is Phase.RUNNING and not pool.degraded
    return pool, pids


def test_crash_respawns_with_exponential_backoff_and_degraded():
    pool, pids = boot(1)
    delays = []
    now, pid = 0.0, pids[0]
    for attempt in range(12):
        pool.exited(pid, 1, now)
        assert pool.degraded
        assert pool.plan(now) == []
        wait = pool.next_wakeup(now)
        assert wait is not None
        delays.append(wait)
        now += wait
        assert pool.plan(now) == [SpawnWorker(0, 1)]
        pid = 300 + attempt
        pool.spawned(pid, 1, 0, now)
    assert [round(d, 6) for d in delays[:4]] == [0.1, 0.2, 0.4, 0.8]
    assert round(max(delays), 6) == BACKOFF_MAX
    assert pool.restarts == 12


def test_clean_exit_refills_at_once_and_stable_worker_resets_backoff():
    pool, pids = boot(1)
    pool.exited(pids[0], 0, 50)
    assert pool.plan(50) == [SpawnWorker(0, 1)]
    pool.spawned(5, 1, 0, 50)
    pool.exited(5, 1, 100)  # crashed after 50 s of life: backoff starts over
    assert round(pool.next_wakeup(100) or 0, 6) == 0.1


def test_front_crash_respawns_at_once_then_backs_off():
    """Nothing is served without a front (and the grpcio front's socket refuses
    connections while none runs): its first crash in a row respawns it in the same plan;
    a crash loop still backs off."""
    pool, _ = boot(1)
    pool.exited(100, None, 50)  # SIGKILL of a front that had served for 50 s
    assert pool.plan(50) == [SpawnFront()]
    pool.spawned(101, 0, 0, 50)
    pool.exited(101, 1, 50.5)  # again at once: now the backoff
    assert pool.plan(50.5) == []
    assert round(pool.next_wakeup(50.5) or 0, 6) == BACKOFF_START


def test_stuck_worker_gets_sigabrt_then_sigkill_then_refill():
    pool, pids = boot(1)
    pool.stuck(pids[0], 10)
    pool.stuck(pids[0], 10)  # reported twice: signalled once
    assert pool.plan(10) == [SendSignal(pids[0], signal.SIGABRT, "call past its deadline")]
    assert pool.plan(11) == []
    assert pool.plan(12) == [SendSignal(pids[0], signal.SIGKILL, "did not exit in time")]
    pool.exited(pids[0], None, 12.1)  # killed by a signal: the supervisor passes None
    assert pool.plan(12.1) == [SpawnWorker(0, 1)]


def test_worker_killed_by_a_signal_it_was_not_sent_is_a_crash():
    pool, pids = boot(1)
    pool.exited(pids[0], None, 5)  # e.g. the OOM killer
    assert pool.plan(5) == [] and pool.degraded and pool.restarts == 1
    assert round(pool.next_wakeup(5) or 0, 6) == BACKOFF_START


def test_reload_switches_only_when_new_generation_ready():
    pool, pids = boot(2)
    pool.reload()
    actions = pool.plan(1)
    assert actions == [SpawnWorker(0, 2), SpawnWorker(1, 2)]
    pool.spawned(400, 2, 0, 1)
    pool.spawned(401, 2, 1, 1)
    pool.ready(400)
    assert pool.plan(1) == []  # one of two ready: old generation still serves
    pool.ready(401)
    actions = pool.plan(2)
    assert sorted(a.pid for a in signals(actions)) == pids
    assert all(a.signum == signal.SIGTERM for a in signals(actions))
    assert pool.generation == 2 and outcomes(actions) == [ReloadOutcome(True, 2)]
    assert Log("generation 2 ready, retiring generation 1") in actions
    for pid in pids:
        pool.exited(pid, 0, 3)
    assert pool.plan(3) == [] and pool.restarts == 0


def test_reload_import_failure_keeps_old_generation():
    pool, _pids = boot(2)
    pool.reload()
    pool.plan(1)
    pool.spawned(400, 2, 0, 1)
    pool.spawned(401, 2, 1, 1)
    pool.exited(400, 3, 1.5)
    actions = pool.plan(1.5)
    assert outcomes(actions) == [ReloadOutcome(False, 1)] and pool.generation == 1
    assert signals(actions) == [SendSignal(401, signal.SIGTERM, "reload failed")]
    assert pool.plan(2) == []
    pool.exited(401, None, 2)  # retired (SIGTERM) while importing
    # Neither served: one import failure, and not a crash restart (what `restarts` counts).
    assert (pool.import_failures, pool.restarts) == (1, 0)


def test_replacement_that_fails_to_import_is_not_a_restart():
    pool, pids = boot(1)
    pool.exited(pids[0], 1, 50)  # a crash: one restart
    pool.plan(60)
    pool.spawned(300, 1, 0, 60)
    pool.exited(300, 3, 61)  # its replacement meets plugin code broken on disk since
    assert (pool.restarts, pool.import_failures) == (1, 1)


def test_import_failure_at_boot_exits_3():
    pool = Pool(target=2, graceful_timeout=5)
    pool.plan(0)
    pool.spawned(100, 0, 0, 0)
    pool.spawned(200, 1, 0, 0)
    pool.spawned(201, 1, 1, 0)
    pool.exited(200, 3, 0.5)
    actions = pool.plan(0.5)
    assert {a.pid for a in signals(actions)} == {100, 201}
    assert Log("plugins failed to import at start; stopping", logging.ERROR) in actions
    for pid in (100, 201):
        pool.exited(pid, 0, 0.6)
    assert pool.plan(0.6) == [Exit(3)]


def test_graceful_stop_drains_front_first_then_workers_then_kills():
    pool, pids = boot(2)
    pool.stop(graceful=True)
    assert pool.plan(10) == [SendSignal(100, signal.SIGTERM, "stopping")]
    assert pool.plan(11) == []
    pool.exited(100, 0, 12)
    actions = pool.plan(12)
    assert len(actions) == len(pids)  # one each, in any order:
    assert set(actions) == {SendSignal(pid, signal.SIGTERM, "stopping") for pid in pids}
    pool.exited(pids[0], 0, 13)
    assert pool.plan(17) == [SendSignal(pids[1], signal.SIGKILL, "did not exit in time")]
    pool.exited(pids[1], None, 17)
    assert pool.plan(17) == [Exit(0)]


def test_resize():
    pool, _pids = boot(2)
    pool.resize(+1)
    assert pool.plan(1) == [SpawnWorker(2, 1)]
    pool.spawned(500, 1, 2, 1)
    pool.resize(-1)
    assert pool.plan(2) == [SendSignal(500, signal.SIGTERM, "pool shrunk")]
    pool.resize(-5)
    assert pool.target == 1


def _start_generation(pool: Pool, generation: int, now: float, first_pid: int) -> list[int]:
    """Plan and spawn every seat of ``generation``; return the new pids."""
    spawns = [a for a in pool.plan(now) if isinstance(a, SpawnWorker)]
    assert spawns == [SpawnWorker(s, generation) for s in range(pool.target)]
    pids = [first_pid + s for s in range(pool.target)]
    for seat, pid in enumerate(pids):
        pool.spawned(pid, generation, seat, now)
    return pids


def test_sighup_during_a_reload_is_coalesced_not_dropped():
    pool, old = boot(2)
    pool.reload()
    gen2 = _start_generation(pool, 2, 1, 400)
    for _ in range(9):  # the rest of a storm: one more reload, not nine, and none lost
        pool.reload()
    for pid in gen2:
        pool.ready(pid)
    actions = pool.plan(2)
    # Generation 2 takes over (it is ready) and generation 3 starts at once.
    assert sorted(a.pid for a in signals(actions)) == old
    assert [a for a in actions if isinstance(a, SpawnWorker)] == [
        SpawnWorker(0, 3),
        SpawnWorker(1, 3),
    ]
    assert pool.generation == 2 and pool.pending_generation == 3
    assert outcomes(actions) == []  # not finished: `tykworker reload` keeps waiting
    for seat, pid in enumerate((500, 501)):
        pool.spawned(pid, 3, seat, 2)
        pool.ready(pid)
    actions = pool.plan(3)
    assert sorted(a.pid for a in signals(actions)) == gen2
    assert pool.generation == 3 and pool.pending_generation is None
    assert outcomes(actions) == [ReloadOutcome(True, 3)] and not pool.reload_queued


def test_failed_reload_then_a_good_one_uses_a_new_generation_number():
    pool, old = boot(2)
    pool.reload()
    failed = _start_generation(pool, 2, 1, 400)
    pool.exited(failed[0], 3, 1.5)
    actions = pool.plan(1.5)
    assert outcomes(actions) == [ReloadOutcome(False, 1)]
    assert signals(actions) == [SendSignal(failed[1], signal.SIGTERM, "reload failed")]
    pool.reload()  # the plugin was fixed
    fixed = _start_generation(pool, 3, 2, 500)
    for pid in fixed:
        pool.ready(pid)
    actions = pool.plan(3)
    # The new generation is not mistaken for the abandoned one: nothing of it retires.
    assert sorted(a.pid for a in signals(actions)) == old
    assert pool.generation == 3 and outcomes(actions) == [ReloadOutcome(True, 3)]


def test_reload_queued_behind_a_failing_one_still_runs():
    pool, _old = boot(1)
    pool.reload()
    (bad,) = _start_generation(pool, 2, 1, 400)
    pool.reload()
    pool.exited(bad, 3, 1.5)
    assert pool.pending_generation == 3
    actions = pool.plan(1.5)
    assert outcomes(actions) == [] and any(isinstance(a, Log) for a in actions)
    (good,) = _start_generation(pool, 3, 1.5, 500)
    pool.ready(good)
    assert outcomes(pool.plan(2)) == [ReloadOutcome(True, 3)]
    assert pool.generation == 3


def test_reload_is_ignored_once_stopping():
    pool, _ = boot(1)
    pool.stop(graceful=True)
    pool.reload(target=4)
    assert pool.pending_generation is None and not pool.reload_queued and pool.target == 1


def test_reload_resizes_the_new_generation():
    pool, _ = boot(1)
    pool.reload(target=2)
    spawns = [a for a in pool.plan(1) if isinstance(a, SpawnWorker)]
    assert spawns == [SpawnWorker(1, 1), SpawnWorker(0, 2), SpawnWorker(1, 2)]
