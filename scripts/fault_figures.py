"""Figures for RELIABILITY.md "Process and store faults": each scenario of the tests
(tests/integration/test_failures.py, test_systemd_notify.py, test_store_faults.py,
test_lifecycle.py) run once more with more calls, printing one table row.

    python scripts/fault_figures.py        # from the repository root, ~1 minute

Counting as in RELIABILITY.md: sent, answered (by status), lost = sent - answered.
Times are wall-clock from this process (monotonic), for orders of magnitude only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import private_redis
from tests.integration.conftest import (
    EVENTS,
    PLUGINS,
    Server,
    busy_with,
    make_object,
    session_processes,
    wait_for,
)


@contextmanager
def server(*args: str) -> Iterator[Server]:
    workdir = Path(tempfile.mkdtemp(prefix="tw-", dir="/tmp"))
    shutil.copytree(PLUGINS, workdir / "middleware")
    shutil.copytree(EVENTS, workdir / "event_handlers")
    base = ["--middleware", str(workdir / "middleware")]
    base += ["--event-handlers", str(workdir / "event_handlers")]
    srv = Server(workdir, [*base, *args]).wait_ready()
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def status(reply: object) -> str:
    code = reply.request.return_overrides.response_code  # type: ignore[attr-defined]
    return "ok" if code in (0, -1) else str(code)


def row(name: str, sent: int, codes: Counter[str], notes: str) -> None:
    answered = sum(codes.values())
    by = ", ".join(f"{k} {v}" for k, v in sorted(codes.items()))
    print(f"| {name} | {sent} | {answered} | {by} | {sent - answered} | {notes} |", flush=True)


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.monotonic()
    value = fn()
    return value, time.monotonic() - start


def oversized() -> None:
    with server("--workers", "1", "--max-message-mb", "1") as srv:
        pids = srv.worker_pids()
        codes: Counter[str] = Counter()
        after: list[float] = []
        for n in range(100):
            big = n % 2 == 0
            size = str(2 * 1024 * 1024 if big else 10)
            reply, took = timed(lambda s=size: srv.dispatch("Inflate", headers={"Size": s}))
            codes[status(reply)] += 1
            if not big:
                after.append(took)
        row(
            "reply over `max_message_mb` (2 MiB reply, 1 MiB limit), every other call",
            100,
            codes,
            f"same worker throughout ({srv.worker_pids() == pids}); the call after an "
            f"oversized one took {max(after) * 1000:.0f} ms at most",
        )


def systemd_stuck() -> None:
    with server("--workers", "1") as srv:
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        while True:
            try:
                filler.sendto(b"STATUS=filler", socket.MSG_DONTWAIT, srv.notify_path)
            except BlockingIOError:
                break
        blocked = samples = 0
        took = []
        for gen in range(2, 5):
            start = time.monotonic()
            srv.signal(signal.SIGHUP)

            def done(g: int = gen) -> bool:
                nonlocal blocked, samples
                samples += 1
                wchan = Path(f"/proc/{srv.proc.pid}/wchan").read_text()
                blocked += wchan == "unix_wait_for_peer"
                return f"generation {g} ready" in srv.log()

            wait_for(done)
            took.append(time.monotonic() - start)
        codes = Counter(status(srv.dispatch("Echo")) for _ in range(20))
        states = [srv.wait_notify(p) for p in ["RELOADING=1", "READY=1"] * 3]
        row(
            "systemd not reading (its queue full), 3 SIGHUPs one after the other",
            20,
            codes,
            f"supervisor seen blocked in a send {blocked} of {samples} samples; reload "
            f"{max(took):.2f} s at most; {len(states)} of 6 state changes delivered once "
            "systemd read again",
        )


def store_faults() -> None:
    redis_dir = Path(tempfile.mkdtemp(prefix="tw-redis-"))
    with (
        private_redis(redis_dir) as (url, redis_server),
        server("--workers", "2", "--redis-url", url) as srv,
    ):
        pids = srv.worker_pids()
        redis_server.send_signal(signal.SIGSTOP)
        codes: Counter[str] = Counter()
        took = []
        for _ in range(10):
            reply, t = timed(lambda: srv.dispatch("Store", headers={"Key": "k"}))
            codes[status(reply)] += 1
            took.append(t)
        redis_server.send_signal(signal.SIGCONT)
        row(
            "Redis stalled (SIGSTOP), hook deadline 5 s",
            10,
            codes,
            f"each call {min(took):.2f}-{max(took):.2f} s (store call gave up); "
            f"workers killed: {len(pids - srv.worker_pids())}",
        )
    with server("--workers", "2") as srv:
        pids = srv.worker_pids()
        path = srv.workdir / ".tyk.sock.tykworker" / "coprocess-data.sqlite3"
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        codes = Counter()
        took = []
        for n in range(10):
            reply, t = timed(
                lambda n=n: srv.dispatch("Store", method="PUT", headers={"Key": f"k{n}"}, body=b"v")
            )
            codes[status(reply)] += 1
            took.append(t)
        locker.execute("ROLLBACK")
        locker.close()
        row(
            "SQLite write lock held by another process, hook deadline 5 s",
            10,
            codes,
            f"each call {min(took):.2f}-{max(took):.2f} s; workers killed: "
            f"{len(pids - srv.worker_pids())}",
        )


def reload_trapped() -> None:
    with server("--workers", "2", "--graceful-timeout", "300") as srv:
        old = srv.worker_pids()
        codes: Counter[str] = Counter()
        sent = [0]
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                sent[0] += 1
                codes[status(srv.dispatch("TrapTerm"))] += 1

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: sum(codes.values()) > 50)
        srv.signal(signal.SIGHUP)
        wait_for(lambda: "generation 2 ready" in srv.log())
        ready = time.monotonic()
        wait_for(lambda: not (srv.worker_pids() & old))
        gone = time.monotonic() - ready
        count = sum(codes.values())
        wait_for(lambda: sum(codes.values()) > count + 50)
        stop.set()
        for t in threads:
            t.join(30)
        row(
            "SIGHUP under load, every worker's plugin ignores SIGTERM (`graceful_timeout` 300 s)",
            sent[0],
            codes,
            f"old workers exited (code 0) {gone:.2f} s after the new generation was ready; "
            f"SIGKILLed: {'killed by signal' in srv.log()}",
        )


def dead_supervisor() -> None:
    with server("--workers", "2", "--hook-timeout", "1") as srv:
        result: dict[str, object] = {}
        thread = threading.Thread(
            target=lambda: result.setdefault(
                "r", srv.dispatch("Chaos", headers={"Do": "spin", "Call-Id": "1"})
            )
        )
        thread.start()
        wait_for(lambda: busy_with(srv, "Chaos"))
        start = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGKILL)
        thread.join(30)
        wait_for(lambda: not session_processes(srv.proc.pid), timeout=60)
        row(
            "SIGKILL of the supervisor, one worker spinning in C (hook deadline 1 s)",
            1,
            Counter([status(result["r"])]),
            f"every process gone {time.monotonic() - start:.2f} s after the kill",
        )
    with server("--workers", "1", "--graceful-timeout", "60", "--hook-timeout", "60") as srv:
        gate = srv.workdir / "gate"
        result = {}
        thread = threading.Thread(
            target=lambda: result.setdefault("r", srv.dispatch("Gate", headers={"Gate": str(gate)}))
        )
        thread.start()
        wait_for(lambda: busy_with(srv, "Gate"))
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(10)
        srv.notify.close()
        os.unlink(srv.notify_path)
        srv.log_path = srv.log_path.rename(srv.workdir / "old.log")
        start = time.monotonic()
        new = Server(srv.workdir, srv.args).wait_ready()
        up = time.monotonic() - start
        codes = Counter(status(new.dispatch("Echo")) for _ in range(20))
        gate.touch()
        thread.join(30)
        codes[status(result["r"])] += 1
        wait_for(lambda: not session_processes(srv.proc.pid))
        codes.update(status(new.dispatch("Echo")) for _ in range(20))
        new.stop()
        row(
            "SIGKILL of the supervisor with a call in flight, then a new server on the same socket",
            41,
            codes,
            f"new server ready {up:.2f} s after its start, while the old front still drained "
            "its call (answered by the hook); its socket kept when the old front left",
        )


def front_crash() -> None:
    """SIGKILL of the front under load; while the supervisor is stopped (no new front),
    a new connection is attempted: refused before, waiting in the backlog now."""
    with server("--workers", "2") as srv:
        codes: Counter[str] = Counter()
        failed = [0]
        sent = [0]
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                sent[0] += 1
                try:
                    codes[status(srv.dispatch("Echo"))] += 1
                except Exception:
                    failed[0] += 1

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: sum(codes.values()) > 100)
        front = srv.front_pid()
        os.kill(srv.proc.pid, signal.SIGSTOP)
        os.kill(front, signal.SIGKILL)
        wait_for(lambda: psutil.Process(front).status() == psutil.STATUS_ZOMBIE)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(srv.socket)
            refused = "no"
        except ConnectionRefusedError:
            refused = "yes"
        start = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGCONT)
        probe.close()
        count = sum(codes.values())
        wait_for(lambda: sum(codes.values()) > count + 100)
        stop.set()
        for t in threads:
            t.join(30)
        row(
            "SIGKILL of the front under load (3 gRPC client threads)",
            sent[0],
            codes,
            f"{failed[0]} calls failed (gRPC UNAVAILABLE: those on the dead front's connections); "
            f"a new connection while no front ran refused: {refused}; load served again "
            f"{time.monotonic() - start:.2f} s after the new front could start",
        )


def stuck_in_c_all_killed() -> None:
    """SIGKILL of the supervisor and the front while a hook sleeps in C (libc.sleep,
    SIGTERM blocked): the worker's watchdog kills it ``graceful_timeout`` later."""
    with server("--workers", "1", "--hook-timeout", "600", "--graceful-timeout", "2") as srv:
        (worker,) = srv.worker_pids()
        front = srv.front_pid()
        failed = Counter[str]()

        def call() -> None:
            try:
                srv.dispatch("Chaos", headers={"Do": "csleep", "Call-Id": "1"})
            except Exception as exc:  # the front dies under it
                failed[type(exc).__name__] += 1

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        wait_for(lambda: busy_with(srv, "Chaos"))
        os.kill(srv.proc.pid, signal.SIGSTOP)
        os.kill(front, signal.SIGKILL)
        start = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(10)

        def gone() -> bool:
            try:
                return psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                return True

        wait_for(gone, timeout=60)
        row(
            "SIGKILL of the supervisor and the front, the worker's hook in `libc.sleep` "
            "(SIGTERM blocked), `graceful_timeout` 2 s",
            1,
            Counter(),
            f"the call failed with the front ({dict(failed)}); the worker was SIGKILLed by "
            f"its watchdog {time.monotonic() - start:.2f} s after the supervisor",
        )


def grpcio_front_crash() -> None:
    """SIGKILL of the grpcio front (idle server), 3 times: how long its socket refuses."""
    with server("--workers", "2", "--front", "grpcio") as srv:
        payload = make_object("Echo").SerializeToString()
        notes = []
        for _ in range(3):
            time.sleep(10.5)  # a front that ran STABLE_AFTER: its first crash in a row
            front = srv.front_pid()
            os.kill(front, signal.SIGKILL)
            start = time.monotonic()
            refused, until = 0, 0.0
            while True:
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(srv.socket)
                except OSError:
                    refused, until = refused + 1, time.monotonic() - start
                    time.sleep(0.001)  # a tight loop would slow the new front down
                    continue
                finally:
                    probe.close()
                # A new channel: one that saw the old front die waits out its reconnect
                # backoff (1 s for grpc-go too).
                with grpc.insecure_channel("unix://" + srv.socket) as channel:
                    try:
                        channel.unary_unary("/coprocess.Dispatcher/Dispatch")(payload, timeout=2)
                        break
                    except grpc.RpcError:
                        continue
            notes.append(f"{refused} refused until {until:.2f} s, served at "
                         f"{time.monotonic() - start:.2f} s")  # fmt: skip
        row("SIGKILL of the grpcio front, 3 times (idle)", 0, Counter(), "; ".join(notes))


if __name__ == "__main__":
    print("| scenario | sent | answered | answered with | lost | notes |")
    print("|---|---|---|---|---|---|")
    scenarios = (oversized, systemd_stuck, store_faults, reload_trapped, dead_supervisor)
    for scenario in (*scenarios, front_crash, stuck_in_c_all_killed, grpcio_front_crash):
        scenario()
