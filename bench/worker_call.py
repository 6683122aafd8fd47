"""A worker's cost per call in-process: its real loop code, no other process, no noise of
the gateway's or the front's.

    python bench/worker_call.py [--batch 8] [--blocks 15] [--calls 2000] [--profile]
    ROOT=/tmp/old python bench/worker_call.py      # the same on another checkout (A/B)

Builds a ``Worker`` (worker/loop.py) with the bench's plugins (bench/plugins) and its
scoreboard slot, then feeds ``--batch`` DISPATCH frames of the bench's trivial Object
(bench/make_payloads.py's, as the gateway builds it) per read into the worker's
``_run_batch`` and reads the replies back from the other end of a socketpair.
Prints the best of ``--blocks`` blocks of ``--calls`` calls, µs per call (the minimum: the
noise of this shared VM only ever adds), and ``Runtime.start_dispatch`` alone the same way
(parse, resolve, hook, serialise), so the loop's own share is the difference.
``TYKWORKER_PURE=1`` measures the sources where modules are compiled. ``--profile`` prints
cProfile's top functions of one more block. Compare builds by alternating runs.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("ROOT", BENCH.parent))
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(BENCH))

from make_payloads import build_object, small_body  # noqa: E402

from tykworker import compiled  # noqa: E402
from tykworker.config import load_settings  # noqa: E402
from tykworker.wire import journal  # noqa: E402
from tykworker.wire.frames import DIRECT_FROM, FrameDecoder, FrameKind, encode_frame  # noqa: E402
from tykworker.wire.handoff import WorkerSpec  # noqa: E402
from tykworker.wire.scoreboard import Scoreboard  # noqa: E402
from tykworker.worker.loop import Worker, _open_journal  # noqa: E402
from tykworker.worker.plugins import load_runtime  # noqa: E402


def best(run: Callable[[], None], blocks: int) -> float:
    """The shortest of ``blocks`` timed runs, in seconds."""
    times = []
    for _ in range(blocks):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--batch", type=int, default=8, help="calls per read (pipelined calls)")
    ap.add_argument("--blocks", type=int, default=15)
    ap.add_argument("--calls", type=int, default=2000, help="calls per block")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--no-journal",
        dest="journal",
        action="store_false",
        help="no reply journal: every reply written at once (a front that could not make one)",
    )
    opts = ap.parse_args(argv)
    payload = build_object("Trivial", small_body())
    tmp = Path(tempfile.mkdtemp(prefix="tw-worker-call-"))
    try:
        return measure(opts, payload, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(opts: argparse.Namespace, payload: bytes, tmp: Path) -> int:
    (tmp / "event_handlers").mkdir()
    settings = load_settings(
        {
            "middleware": str(BENCH / "plugins"),
            "event_handlers": str(tmp / "event_handlers"),
            "runtime_dir": str(tmp / "run"),
        },
        environ={},
    )
    Scoreboard.create(tmp / "scoreboard")
    worker = Worker(settings, WorkerSpec(1, 0, 0, tmp / "bridge", -1, tmp / "scoreboard"))
    if opts.journal:  # as in service: the front makes it, the worker maps it
        worker.journal = _open_journal(journal.create())
    runtime = load_runtime(settings)
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    frames = b"".join(encode_frame(FrameKind.DISPATCH, i + 1, payload) for i in range(opts.batch))
    decoder = FrameDecoder(settings.max_message_bytes, direct_from=DIRECT_FROM)
    reads = max(1, opts.calls // opts.batch)
    sink = bytearray(1 << 20)  # the replies are read into it: no allocation per read

    def loop() -> None:
        for _ in range(reads):
            decoder.feed(memoryview(frames))
            worker._run_batch(ours, runtime, decoder)  # type: ignore[arg-type]
            try:
                while theirs.recv_into(sink):
                    pass
            except BlockingIOError:
                pass

    def dispatch_only() -> None:
        for _ in range(reads * opts.batch):
            runtime.start_dispatch(payload)

    loop()  # warm-up
    calls = reads * opts.batch
    per_call = best(loop, opts.blocks) / calls * 1e6
    alone = best(dispatch_only, opts.blocks) / calls * 1e6
    print(f"{ROOT}: {compiled.describe()}")
    how = "journal" if opts.journal else "no journal"
    print(f"worker _run_batch, {opts.batch} calls per read ({how}): {per_call:.2f} µs per call")
    print(f"Runtime.start_dispatch alone: {alone:.2f} µs per call")
    print(f"(best of {opts.blocks} blocks of {calls} calls)")
    if opts.profile:
        profile = cProfile.Profile()
        profile.runcall(loop)
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)
    runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
