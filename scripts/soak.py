"""The correctness soak of RELIABILITY.md: steady load for a few minutes while the pool
is reloaded every 2 s (a new plugin version each time) and a random worker is SIGKILLed
every 7 s; then every call is accounted for.

    python scripts/soak.py [SECONDS]        # from the repository root; default 300

Load and counting are the chaos scenarios' (tests/integration/test_reliability.py
``Load``): 3 gRPC client threads on one channel plus one raw-socket connection keeping 4
calls pipelined, every call matched to its reply by its ``Call-Id``. Prints sent,
answered (by status), lost, duplicated, misrouted, the clients' errors, and the RSS of
the supervisor and the front (the long-lived processes) and of the workers, before and
after.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.conftest import EVENTS, PLUGINS, Server, wait_for
from tests.integration.test_reliability import Load, set_version

MIB = 1024 * 1024


def rss(server: Server) -> tuple[int, int, int]:
    """(supervisor, front, all workers) RSS in bytes."""
    sup = psutil.Process(server.proc.pid).memory_info().rss
    front = psutil.Process(server.front_pid()).memory_info().rss
    workers = 0
    for pid in server.worker_pids():
        with contextlib.suppress(psutil.Error):
            workers += psutil.Process(pid).memory_info().rss
    return sup, front, workers


def main(seconds: float) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="tw-soak-", dir="/tmp"))
    shutil.copytree(PLUGINS, workdir / "middleware")
    shutil.copytree(EVENTS, workdir / "event_handlers")
    raw = str(workdir / "raw.sock")
    args = ["--middleware", str(workdir / "middleware")]
    args += ["--event-handlers", str(workdir / "event_handlers")]
    server = Server(workdir, [*args, "--workers", "2", "--raw-socket", raw]).wait_ready()
    try:
        load = Load(server, lambda _: {}, threads=3, raw=raw, window=4)
        load.wait_calls(1000)
        before = rss(server)
        rng = random.Random(13)
        reloads = kills = 0
        start = time.monotonic()
        next_reload, next_kill = start + 2, start + 7
        while (now := time.monotonic()) < start + seconds:
            if now >= next_reload:
                reloads += 1
                set_version(workdir, str(reloads + 1))
                server.signal(signal.SIGHUP)
                next_reload += 2
            if now >= next_kill:
                pids = sorted(server.worker_pids())
                if pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(rng.choice(pids), signal.SIGKILL)
                        kills += 1
                next_kill += 7
            time.sleep(0.05)
        version = str(reloads + 1)
        wait_for(
            lambda: server.dispatch("Echo").request.set_headers["X-Version"] == version,
            timeout=30,
            what="the last reload's code serving",
        )
        after = rss(server)
        tally = load.finish()
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(tally.by_status.items()))
        print(f"{seconds:g} s, {reloads} SIGHUPs, {kills} worker SIGKILLs")
        print(
            f"sent {tally.sent}, answered {len(tally.answers)} ({statuses}), lost {tally.lost}, "
            f"duplicated {tally.duplicated}, misrouted {tally.misrouted}, "
            f"client errors {dict(tally.errors)}"
        )
        names = ("supervisor", "front", "workers")
        pairs = zip(names, before, after, strict=True)
        print(
            "RSS MiB before -> after: "
            + ", ".join(f"{n} {b / MIB:.1f} -> {a / MIB:.1f}" for n, b, a in pairs)
        )
        ok = not (tally.lost or tally.duplicated or tally.misrouted or tally.errors)
        return 0 if ok else 1
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 300.0))
