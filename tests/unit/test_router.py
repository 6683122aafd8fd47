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
    assert r.expire(1) == [Answer(call(1), Reason.TIMEOUT, 1)]
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
