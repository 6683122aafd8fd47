"""Two builds' CPU per call side by side: the real server (front, workers, supervisor) of
each source tree, the same closed-loop load, rounds alternating between the trees.

    python bench/cpu_ab.py /tmp/old .                      # HEAD checked out in /tmp/old
    python bench/cpu_ab.py . . --b-args "--pipeline-depth 8" --rounds 5
    python bench/cpu_ab.py . . --pin-b one                 # B: front and workers on CPU 1

Each run starts ``tykworker serve`` from one tree (``PYTHONPATH`` = the tree, so its
compiled modules, if built there with ``scripts/compile``, run too), waits until it is
ready and idle, sends ``--calls`` trivial calls at ``-c`` with bench/loadgen, and reads the
CPU time (user + system) of each server process before and after: µs per call by process
group, and calls/s. It prints every run and the medians. This shared VM's speed moves
between minutes (steal time), hence alternating rounds and medians; CPU per call moves far
less than calls/s. Not a product number on its own: bench/run.py and bench/gateway.py are.

``--pin-b split`` pins B's front to CPU 0 and its workers to CPU 1 once it is ready,
``--pin-b one`` all of them to CPU 1 (experiments of stop 30; tykworker has no such
option).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    OUT,
    READY_EXPECT,
    Server,
    cpu_delta,
    cpu_snapshot,
    ensure_loadgen,
    loadgen,
    settle,
    stop,
    wait_ready,
    write_payloads,
)

GROUPS = ("front", "workers", "supervisor")


def start(tree: Path, tmp: Path, tag: str, workers: int, extra: list[str]) -> Server:
    """``tykworker serve`` of ``tree``, its bench plugins, on a socket in ``tmp``."""
    import subprocess

    sock = tmp / f"{tag}.sock"
    events = tmp / "event_handlers"
    events.mkdir(exist_ok=True)
    argv = [
        sys.executable, "-m", "tykworker", "serve", "--socket", str(sock),
        "--middleware", str(tree / "bench" / "plugins"), "--workers", str(workers),
        "--event-handlers", str(events), *extra,
    ]  # fmt: skip
    log_path = tmp / f"{tag}.log"
    logfile = log_path.open("wb")
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        argv, cwd=tree, env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
    )
    return Server("tykworker", proc, sock, None, log_path, argv, logfile)


def pin(server: Server, how: str) -> None:
    """``split``: the front on CPU 0, the workers on CPU 1; ``one``: all of them on CPU 1
    (the load generator keeps both)."""
    last = 1 % (os.cpu_count() or 1)
    for _, (role, proc) in server.processes().items():
        if role in ("front", "workers"):
            proc.cpu_affinity([0] if role == "front" and how == "split" else [last])


def one_run(
    tree: Path, tmp: Path, tag: str, opts: argparse.Namespace, extra: list[str], pinned: str
) -> dict[str, float]:
    payload = write_payloads(OUT / "payloads")["trivial"]
    server = start(tree, tmp, tag, opts.workers, extra)
    try:
        wait_ready(server, payload, 60)
        settle(server)
        if pinned:
            pin(server, pinned)
        before = cpu_snapshot(server)
        args = ["-target", server.target, "-payload", str(payload), "-n", str(opts.calls)]
        res = loadgen([*args, "-c", str(opts.concurrency), "-expect", READY_EXPECT], 600)
        used = cpu_delta(before, cpu_snapshot(server))
    finally:
        stop(server)
    if res.get("ok") != opts.calls:
        raise SystemExit(f"{tag}: {res.get('ok')} of {opts.calls} calls ok: {res}")
    row = {g: used.get(g, 0.0) / opts.calls * 1e6 for g in GROUPS}
    row["calls/s"] = opts.calls / res["duration_s"]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("a", type=Path, help="source tree A")
    ap.add_argument("b", type=Path, help="source tree B")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=60000)
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--a-args", default="", help="extra tykworker serve flags for A")
    ap.add_argument("--b-args", default="", help="extra tykworker serve flags for B")
    ap.add_argument(
        "--pin-b",
        choices=("split", "one"),
        default="",
        help="B pinned: split = front on CPU 0, workers on CPU 1; one = all on CPU 1",
    )
    opts = ap.parse_args(argv)
    ensure_loadgen(False)
    sides = {
        "A": (opts.a.resolve(), shlex.split(opts.a_args), ""),
        "B": (opts.b.resolve(), shlex.split(opts.b_args), opts.pin_b),
    }
    rows: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="tw-ab-") as tmp:
        for n in range(opts.rounds):
            for side, (tree, extra, pinned) in sides.items():
                row = one_run(tree, Path(tmp), f"{side}{n}", opts, extra, pinned)
                rows[side].append(row)
                print(side, _fmt(row), flush=True)
    print(f"C={opts.concurrency}, {opts.calls} calls per run, {opts.workers} workers; medians:")
    for side, (tree, extra, pinned) in sides.items():
        med = {k: statistics.median(r[k] for r in rows[side]) for k in rows[side][0]}
        what = " ".join([str(tree), *extra, *([f"(pinned: {pinned})"] if pinned else [])])
        print(f"{side} {_fmt(med)}  [{what}]")
    return 0


def _fmt(row: dict[str, float]) -> str:
    cpu = " ".join(f"{g} {row[g]:.1f}" for g in GROUPS)
    return f"CPU µs/call: {cpu}; {row['calls/s']:,.0f} calls/s"


if __name__ == "__main__":
    sys.exit(main())
