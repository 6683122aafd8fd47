"""Router with async hooks (issue 15): capacity, out-of-order replies, cancel at the
deadline, a blocked event loop, detach; exactly one exit per call under random events."""

from __future__ import annotations

import random

from tykworker.front.router import (
    LOOP_SILENCE,
    Action,
    Answer,
    Arm,
    Assign,
    Call,
    Cancel,
    Close,
    Completed,
    Lane,
    Lost,
    Router,
)
from tykworker.wire.reasons import Reason


def call(n: int, hook: str = "Io") -> Call:
    return Call(n, 1, b"payload-%d" % n, hook_type=1, hook_name=hook)


def lane(conn: int, capacity: int = 3, gen: int = 1, hooks: str = "Io") -> Lane:
    names = frozenset(hooks.split()) if hooks else frozenset()
    return Lane(conn, 1000 + conn, gen, conn, async_hooks=names, capacity=capacity)


def submit(r: Router, c: Call) -> list[Action]:
    return [a for a in r.submit(c) if not isinstance(a, Arm)]


def test_async_calls_fill_a_worker_up_to_its_capacity_then_queue():
    r = Router(queue_limit=10)
    r.join(lane(1, capacity=2))
    assert submit(r, call(1)) == [Assign(1, call(1))]
    assert submit(r, call(2)) == [Assign(1, call(2))]
    assert submit(r, call(3)) == []  # queued: the worker runs 2 already
    assert list(r.workers[1].tasks) == [1, 2] and not r.workers[1].calls
    # Replies in any order; each frees room for the next queued call.
    assert r.reply(1, 2, b"two") == [Completed(call(2), 1, b"two"), Assign(1, call(3))]
    assert r.reply(1, 1, b"one") == [Completed(call(1), 1, b"one")]


def test_async_calls_spread_over_workers_fewest_first():
    r = Router(queue_limit=10)
    r.join(lane(1))
    r.join(lane(2))
    targets = [submit(r, call(n))[0] for n in range(1, 5)]
    assert [a.conn_id for a in targets if isinstance(a, Assign)] == [1, 2, 1, 2]


def test_a_sync_call_goes_to_the_worker_running_fewest_async_calls():
    r = Router(queue_limit=10)
    r.join(lane(1))
    r.join(lane(2))
    for n in (1, 2, 3):
        submit(r, call(n))  # worker 1: two, worker 2: one
    assert submit(r, call(4, "Sync")) == [Assign(2, call(4, "Sync"))]
    assert r.workers[2].call == call(4, "Sync")


def test_a_worker_that_does_not_name_the_hook_gets_it_as_a_sync_call():
    r = Router(queue_limit=10)
    r.join(lane(1, hooks=""))
    assert submit(r, call(1)) == [Assign(1, call(1))]
    assert r.workers[1].call == call(1)


def test_an_async_call_never_goes_as_a_sync_call_to_a_worker_naming_it():
    r = Router(queue_limit=10)
    r.join(lane(1, capacity=1))
    submit(r, call(1))
    assert submit(r, call(2)) == []
    assert [c.call_id for c in r.queue] == [2] and not r.workers[1].calls


def test_timeout_of_an_async_call_cancels_it_and_keeps_the_worker():
    r = Router(queue_limit=10)
    r.join(lane(1))
    submit(r, call(1))
    submit(r, call(2))
    assert r.expire(1) == [Answer(call(1), Reason.TIMEOUT, 1), Cancel(1, call(1))]
    worker = r.workers[1]
    assert not worker.lost and list(worker.tasks) == [2]
    assert r.reply(1, 1, b"") == []  # the acknowledgement
    assert r.overdue(1, 1) == []
    assert not worker.lost
    assert submit(r, call(3)) == [Assign(1, call(3))]


def test_an_unacknowledged_cancel_loses_the_worker():
    r = Router(queue_limit=10)
    r.join(lane(1))
    submit(r, call(1))
    submit(r, call(2))
    r.expire(1)
    assert r.overdue(1, 1) == [Lost(1, call(1))]
    assert r.workers[1].lost
    assert submit(r, call(3)) == []  # queued, no longer sent there
    # Its other call is answered at its own deadline (no second cancel), or at leave.
    assert r.expire(2) == [Answer(call(2), Reason.TIMEOUT, 1)]
    assert r.leave(1) == []


def test_a_silent_event_loop_loses_the_worker_at_the_deadline():
    r = Router(queue_limit=10)
    r.join(lane(1))
    submit(r, call(1))
    submit(r, call(2))
    r.alive(1, 0.1)
    # Heard 0.4 s before the deadline: a cancel, and the worker goes on.
    assert r.expire(1, now=0.5) == [Answer(call(1), Reason.TIMEOUT, 1), Cancel(1, call(1))]
    # Nothing heard for more than LOOP_SILENCE: lost at once.
    assert r.expire(2, now=0.1 + LOOP_SILENCE + 0.01) == [
        Answer(call(2), Reason.TIMEOUT, 1),
        Lost(1, call(2), silent=True),
    ]
    assert r.workers[1].lost


def test_a_late_arrival_is_not_blamed_on_an_old_silence():
    r = Router(queue_limit=10)
    r.join(lane(1))
    c = call(1)
    c.arrived_at = 100.0  # the worker sent no heartbeat since it joined, long before
    r.submit(c)
    assert r.expire(1, now=100.2) == [Answer(c, Reason.TIMEOUT, 1), Cancel(1, c)]


def test_a_cancel_waits_while_a_sync_call_runs_on_that_worker():
    r = Router(queue_limit=10)
    r.join(lane(1))
    submit(r, call(1))
    submit(r, call(2, "Sync"))
    r.expire(1)
    assert r.overdue(1, 1) == [Cancel(1, call(1), send=False)]
    r.reply(1, 2)
    assert r.overdue(1, 1) == [Lost(1, call(1))]


def test_leave_answers_every_async_call_with_the_crash_answer():
    r = Router(queue_limit=10)
    r.join(lane(1))
    submit(r, call(1))
    submit(r, call(2))
    assert r.leave(1) == [Answer(call(1), Reason.CRASH, 1), Answer(call(2), Reason.CRASH, 1)]
    assert not r.assigned and not r.async_names


def test_a_draining_worker_closes_after_its_last_async_call():
    r = Router(queue_limit=10)
    r.join(lane(1))
    submit(r, call(1))
    submit(r, call(2))
    assert r.drain(1) == []
    assert r.reply(1, 2) == [Completed(call(2), 1, b"")]
    assert r.reply(1, 1) == [Completed(call(1), 1, b""), Close(1)]


def test_detach_moves_a_sync_call_to_the_async_ones_and_learns_its_hook():
    r = Router(queue_limit=10)
    r.join(lane(1, hooks=""))
    submit(r, call(1, "Late"))
    assert submit(r, call(2, "Late")) == []  # the worker seems busy with a sync call
    assert r.detach(1, 1) == [Assign(1, call(2, "Late"))]
    assert set(r.workers[1].tasks) == {1, 2} and "Late" in r.async_names
    assert submit(r, call(3, "Late")) == [Assign(1, call(3, "Late"))]
    assert r.detach(1, 1) == []  # twice: nothing


def test_random_async_sequences_answer_every_call_exactly_once():
    rng = random.Random(15)
    for _ in range(300):
        r = Router(queue_limit=rng.randint(0, 4), depth=rng.randint(1, 3), fast_limit=1.0)
        r.service[(1, "Sync")] = 0.0
        outcomes: dict[int, int] = {}
        sent: list[int] = []
        next_call, next_conn = 0, 0
        for _ in range(80):
            op = rng.choice(["submit"] * 3 + ["join", "reply", "reply", "expire", "leave"])
            op = rng.choice([op, "overdue", "detach"]) if rng.random() < 0.15 else op
            actions: list[Action] = []
            if op == "submit":
                next_call += 1
                actions = submit(r, call(next_call, rng.choice(["Io", "Io", "Sync", "Late"])))
            elif op == "join":
                next_conn += 1
                actions = r.join(lane(next_conn, capacity=rng.randint(1, 3)))
            elif op in ("reply", "detach") and r.assigned:
                cid, conn = rng.choice(list(r.assigned.items()))
                actions = r.reply(conn, cid) if op == "reply" else r.detach(conn, cid)
            elif op == "expire" and next_call:
                actions = r.expire(rng.randint(1, next_call), now=rng.choice([0.0, 9.0]))
            elif op == "overdue" and r.workers:
                conn = rng.choice(list(r.workers))
                actions = r.overdue(conn, rng.randint(1, max(1, next_call)))
            elif op == "leave" and r.workers:
                actions = r.leave(rng.choice(list(r.workers)))
            for a in actions:
                if isinstance(a, (Answer, Completed)):
                    outcomes[a.call.call_id] = outcomes.get(a.call.call_id, 0) + 1
                if isinstance(a, Assign) and a.call.call_id not in sent:
                    sent.append(a.call.call_id)
            for w in r.workers.values():
                assert set(w.tasks).isdisjoint(c.call_id for c in w.calls)
                assert not (w.lost and w.calls)
            held = sum(w.in_flight for w in r.workers.values())
            assert held == len(r.assigned)
        assert all(n == 1 for n in outcomes.values())
        pending = set(r.assigned) | {c.call_id for c in r.queue}
        assert pending.isdisjoint(outcomes)
        assert len(pending) + len(outcomes) == next_call
        assert sent == sorted(sent)
