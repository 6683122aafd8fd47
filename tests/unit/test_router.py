"""Router: assignment, queueing, deadlines, worker death; exactly one exit per call."""

from __future__ import annotations

import random

from tykworker.front.router import (
    Action,
    Answer,
    Arm,
    Assign,
    Call,
    Close,
    Completed,
    Lane,
    Router,
    deadline_of,
)
from tykworker.wire.reasons import Reason


def call(n: int, arrived_at: float = 0.0) -> Call:
    return Call(n, 1, b"payload-%d" % n, arrived_at=arrived_at)


def worker(conn: int, gen: int = 1) -> Lane:
    return Lane(conn, pid=1000 + conn, generation=gen, index=conn)


def submit(r: Router, c: Call) -> list[Action]:
    """``Router.submit`` without its ``Arm`` (deadlines are tested on their own below)."""
    return [a for a in r.submit(c) if not isinstance(a, Arm)]


def test_idle_worker_takes_the_call():
    r = Router(queue_limit=10)
    assert r.join(worker(1)) == []
    assert submit(r, call(1)) == [Assign(1, call(1))]
    assert r.workers[1].call == call(1)


def test_one_call_per_worker_then_queue_then_overload():
    r = Router(queue_limit=1)
    r.join(worker(1))
    submit(r, call(1))
    assert submit(r, call(2)) == []  # queued
    assert submit(r, call(3)) == [Answer(call(3), Reason.OVERLOAD)]
    actions = r.reply(1, 1, b"reply")
    assert actions == [Completed(call(1), 1, b"reply"), Assign(1, call(2))]


def test_queue_is_fifo_and_served_when_workers_join():
    r = Router(queue_limit=5)
    for n in range(3):
        r.submit(call(n))
    assert r.join(worker(7)) == [Assign(7, call(0))]
    assert r.reply(7, 0)[1] == Assign(7, call(1))


def test_timeout_of_assigned_call_loses_the_worker_and_ignores_late_reply():
    r = Router(queue_limit=5)
    r.join(worker(1))
    submit(r, call(1))
    assert r.expire(1) == [Answer(call(1), Reason.TIMEOUT, 1, stuck=True)]
    assert r.workers[1].lost
    assert r.reply(1, 1) == []  # late reply: already answered
    submit(r, call(2))
    assert r.queue[0] == call(2)  # lost worker gets nothing
    assert r.expire(1) == []  # answered once only


def test_timeout_of_queued_call():
    r = Router(queue_limit=5)
    submit(r, call(1))
    assert r.expire(1) == [Answer(call(1), Reason.TIMEOUT)]
    assert not r.queue


def test_worker_death_answers_its_call_with_crash():
    r = Router(queue_limit=5)
    r.join(worker(1))
    submit(r, call(1))
    assert r.leave(1) == [Answer(call(1), Reason.CRASH, 1)]
    assert r.leave(1) == []
    assert r.expire(1) == []


def test_drain_closes_when_idle_or_after_the_reply():
    r = Router(queue_limit=5)
    r.join(worker(1))
    r.join(worker(2))
    assert r.drain(2) == [Close(2)]
    submit(r, call(1))
    assert r.drain(1) == []
    assert r.reply(1, 1, b"reply") == [Completed(call(1), 1, b"reply"), Close(1)]


def test_newest_generation_preferred():
    r = Router(queue_limit=5)
    r.join(worker(1, gen=1))
    r.join(worker(2, gen=2))
    assert submit(r, call(1)) == [Assign(2, call(1))]


def test_stop_accepting_answers_unavailable():
    r = Router(queue_limit=5)
    r.stop_accepting()
    assert submit(r, call(1)) == [Answer(call(1), Reason.UNAVAILABLE)]


def test_random_event_sequences_answer_every_call_exactly_once():
    rng = random.Random(7)
    for _ in range(200):
        r = Router(queue_limit=rng.randint(0, 4))
        outcomes: dict[int, int] = {}
        next_call, next_conn = 0, 0
        for _ in range(60):
            op = rng.choice(["submit", "join", "reply", "expire", "leave", "drain"])
            actions = []
            if op == "submit":
                next_call += 1
                actions = submit(r, call(next_call))
            elif op == "join":
                next_conn += 1
                actions = r.join(worker(next_conn, gen=rng.randint(1, 2)))
            elif op == "reply" and r.assigned:
                cid, conn = rng.choice(list(r.assigned.items()))
                actions = r.reply(conn, cid)
            elif op == "expire" and next_call:
                actions = r.expire(rng.randint(1, next_call))
            elif op == "leave" and r.workers:
                actions = r.leave(rng.choice(list(r.workers)))
            elif op == "drain" and r.workers:
                actions = r.drain(rng.choice(list(r.workers)))
            for a in actions:
                if isinstance(a, (Answer, Completed)):
                    outcomes[a.call.call_id] = outcomes.get(a.call.call_id, 0) + 1
                if isinstance(a, Assign):
                    assert r.workers[a.conn_id].call is a.call
        assert all(n == 1 for n in outcomes.values())
        pending = set(r.assigned) | {c.call_id for c in r.queue}
        assert pending.isdisjoint(outcomes)
        assert len(pending) + len(outcomes) == next_call
        busy = [w for w in r.workers.values() if w.call is not None]
        assert len(busy) == len(r.assigned)


def test_deadline_is_the_shorter_of_the_hook_types_and_the_clients():
    assert deadline_of(100.0, 5.0, None) == 105.0
    assert deadline_of(100.0, 5.0, 2.0) == 102.0
    assert deadline_of(100.0, 5.0, 9.0) == 105.0


def test_submit_arms_the_deadline_on_the_calls_clock_unless_answered_at_once():
    r = Router(queue_limit=1)
    r.join(worker(1))
    first, queued, refused = call(1, arrived_at=50.0), call(2, arrived_at=51.0), call(3)
    assert r.submit(first, 5.0, 0.5) == [Arm(first, 50.5), Assign(1, first)]
    assert r.submit(queued, 5.0, None) == [Arm(queued, 56.0)]
    assert r.submit(refused, 5.0, 1.0) == [Answer(refused, Reason.OVERLOAD)]
    r.stop_accepting()
    assert r.submit(call(4), 5.0, 1.0) == [Answer(call(4), Reason.UNAVAILABLE)]


# --- pipelining (depth > 1) -------------------------------------------------------------


def hooked(n: int, hook: str = "Fast") -> Call:
    return Call(n, 1, b"payload-%d" % n, hook_type=1, hook_name=hook)


def pipelined(depth: int = 3, *, fast: tuple[str, ...] = ("Fast",)) -> Router:
    """A router that has seen ``fast`` hooks answer in 0.1 ms (and ``Slow`` in 50 ms)."""
    r = Router(queue_limit=10, depth=depth, fast_limit=0.002)
    for hook in fast:
        r.service[(1, hook)] = 0.0001
    r.service[(1, "Slow")] = 0.05
    return r


def test_fast_calls_go_ahead_to_a_busy_worker_only_when_none_is_idle():
    r = pipelined()
    r.join(worker(1))
    r.join(worker(2))
    assert submit(r, hooked(1)) == [Assign(2, hooked(1))] or r.workers[1].calls
    assert len(submit(r, hooked(2))) == 1  # the other, idle worker
    assert {len(w.calls) for w in r.workers.values()} == {1}
    assert len(submit(r, hooked(3))) == 1  # both busy: sent ahead
    assert sorted(len(w.calls) for w in r.workers.values()) == [1, 2]
    assert len(submit(r, hooked(4))) == 1  # to the worker with fewer calls
    assert sorted(len(w.calls) for w in r.workers.values()) == [2, 2]


def test_slow_and_unknown_hooks_are_never_sent_ahead_and_nothing_waits_behind_them():
    r = pipelined()
    r.join(worker(1))
    assert submit(r, hooked(1, "Slow")) == [Assign(1, hooked(1, "Slow"))]
    assert submit(r, hooked(2)) == []  # queued: nothing waits behind a slow call
    r2 = pipelined()
    r2.join(worker(1))
    submit(r2, hooked(1))
    assert submit(r2, hooked(2, "NeverSeen")) == []  # unknown hook: idle workers only
    assert submit(r2, hooked(3)) == []  # and calls behind it in the queue keep their order
    assert r2.reply(1, 1, b"r", now=0.0001)[1:] == [Assign(1, hooked(2, "NeverSeen"))]


def test_a_worker_is_sent_at_most_depth_calls_and_refilled_from_the_queue_in_order():
    r = pipelined(depth=2)
    r.join(worker(1))
    for n in range(1, 5):
        submit(r, hooked(n))
    assert [c.call_id for c in r.workers[1].calls] == [1, 2]
    assert [c.call_id for c in r.queue] == [3, 4]
    actions = r.reply(1, 1, b"one", now=0.0001)
    assert actions == [Completed(hooked(1), 1, b"one"), Assign(1, hooked(3))]


def test_service_times_come_from_replies_and_make_a_hook_slow_or_fast():
    r = Router(queue_limit=10, depth=4, fast_limit=0.002)
    r.join(worker(1), now=10.0)
    submit(r, Call(1, 1, b"", 1, "H", arrived_at=10.0))
    r.reply(1, 1, now=10.001)  # 1 ms: fast
    assert abs(r.service[(1, "H")] - 0.001) < 1e-9
    r.submit(Call(2, 1, b"", 1, "H", arrived_at=11.0))
    assert len(submit(r, Call(3, 1, b"", 1, "H", arrived_at=11.0))) == 1  # sent ahead
    r.reply(1, 2, now=11.1)  # 100 ms: the average moves over the limit
    assert r.service[(1, "H")] > 0.002
    assert r.workers[1].holds_slow  # call 3 is now a slow hook's call: nothing more
    assert submit(r, Call(4, 1, b"", 1, "H", arrived_at=11.1)) == []


def test_timeout_of_the_running_call_reroutes_the_calls_sent_ahead_in_order():
    r = pipelined()
    r.join(worker(1))
    for n in (1, 2, 3, 4):
        submit(r, hooked(n))
    assert [c.call_id for c in r.queue] == [4]  # the worker holds depth = 3 calls
    assert r.expire(1) == [Answer(hooked(1), Reason.TIMEOUT, 1, stuck=True)]
    assert r.workers[1].lost and not r.workers[1].calls
    assert [c.call_id for c in r.queue] == [2, 3, 4]  # ahead of the call still queued
    assert r.join(worker(2)) == [Assign(2, hooked(2)), Assign(2, hooked(3)), Assign(2, hooked(4))]
    assert r.reply(1, 2, b"late") == []  # the lost worker's late reply is ignored


def test_timeout_of_a_call_waiting_behind_another_keeps_the_worker():
    r = pipelined()
    r.join(worker(1))
    submit(r, hooked(1))
    submit(r, hooked(2))
    assert r.expire(2) == [Answer(hooked(2), Reason.TIMEOUT, 1)]
    assert not r.workers[1].lost
    assert r.reply(1, 2, b"late") == []
    assert r.reply(1, 1, b"ok")[0] == Completed(hooked(1), 1, b"ok")


def test_crash_answers_the_running_call_and_reroutes_the_rest_to_an_idle_worker():
    r = pipelined()
    r.join(worker(1))
    r.join(worker(2))
    for n in (1, 2, 3, 4):
        submit(r, hooked(n))
    crashed = next(w for w in r.workers.values() if len(w.calls) == 2)
    other = next(w for w in r.workers.values() if w is not crashed)
    running, waiting = crashed.calls[0], crashed.calls[1]
    r.reply(other.conn_id, other.calls[0].call_id)
    r.reply(other.conn_id, other.calls[0].call_id)
    assert not other.calls
    actions = r.leave(crashed.conn_id)
    assert actions == [
        Answer(running, Reason.CRASH, crashed.conn_id),
        Assign(other.conn_id, waiting),
    ]


def test_drain_closes_after_the_last_call_sent_ahead():
    r = pipelined()
    r.join(worker(1))
    submit(r, hooked(1))
    submit(r, hooked(2))
    assert r.drain(1) == []
    assert r.reply(1, 1) == [Completed(hooked(1), 1, b"")]
    assert r.reply(1, 2) == [Completed(hooked(2), 1, b""), Close(1)]


def test_random_pipelined_sequences_keep_every_invariant():
    rng = random.Random(11)
    for _ in range(300):
        depth = rng.randint(1, 4)
        r = pipelined(depth)
        r.queue_limit = rng.randint(0, 4)
        outcomes: dict[int, int] = {}
        sent: list[int] = []  # call ids in the order of their first Assign
        next_call, next_conn = 0, 0
        for _ in range(80):
            op = rng.choice(["submit", "submit", "join", "reply", "reply", "expire", "leave"])
            actions: list[Action] = []
            if op == "submit":
                next_call += 1
                hook = rng.choice(["Fast", "Fast", "Slow", "New"])
                actions = submit(r, hooked(next_call, hook))
            elif op == "join":
                next_conn += 1
                actions = r.join(worker(next_conn))
            elif op == "reply" and r.assigned:
                cid, conn = rng.choice(list(r.assigned.items()))
                actions = r.reply(conn, cid)
            elif op == "expire" and next_call:
                actions = r.expire(rng.randint(1, next_call))
            elif op == "leave" and r.workers:
                actions = r.leave(rng.choice(list(r.workers)))
            for a in actions:
                if isinstance(a, (Answer, Completed)):
                    outcomes[a.call.call_id] = outcomes.get(a.call.call_id, 0) + 1
                if isinstance(a, Assign) and a.call.call_id not in sent:
                    sent.append(a.call.call_id)
            for w in r.workers.values():
                assert len(w.calls) <= depth
                # nothing behind a slow (or unknown) call
                assert all(r._is_fast(c) for c in list(w.calls)[1:]) or len(w.calls) <= 1
                assert not (w.lost and w.calls)
            assert sum(len(w.calls) for w in r.workers.values()) == len(r.assigned)
        assert all(n == 1 for n in outcomes.values())
        pending = set(r.assigned) | {c.call_id for c in r.queue}
        assert pending.isdisjoint(outcomes)
        assert len(pending) + len(outcomes) == next_call
        assert sent == sorted(sent)  # calls are sent in arrival order
