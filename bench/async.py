"""Async hooks against sync ones: 50 ms of simulated I/O per call, side by side in one run.

    python bench/async.py                  # C = 1, 64, 512; 5 s per run; ~1.5 min
    python bench/async.py --quick          # 2 s runs
    python bench/async.py --concurrency 1,8 --duration 1 --warmup 0.2   # a smoke test

One ``tykworker serve --workers 2`` per variant, the same grpc-go load generator
(bench/loadgen, one connection, closed loop of C goroutines) and the same ~1 KB Pre-hook
Object (bench/make_payloads.py) naming the hook:

* ``async``: ``AsyncBlocking``, an ``async def`` awaiting ``asyncio.sleep(0.05)`` (an
  upstream call made with an async client); each worker runs up to ``async_concurrency``
  (``--async-concurrency``, default here 256 so that 2 workers hold C = 512) at once;
* ``sync``: ``Blocking``, ``time.sleep(0.05)``: one call per worker at a time, so at most
  2 / 0.05 s = 40 calls/s whatever C is.

Reported per variant and C: calls/s, p50/p99 latency, and server CPU per call (every
process of the server: supervisor, front, workers; psutil, as bench/run.py). Targets
(issue 15): async at C = 512 at least 4,000 calls/s with p99 under 100 ms; sync unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_payloads  # bench/make_payloads.py: the Object builder
import run as bench  # bench/run.py: server start-up, loadgen, CPU sampling

VARIANTS = {"async": "AsyncBlocking", "sync": "Blocking"}


def write_payload(tmp: Path, hook: str) -> Path:
    path = tmp / f"{hook}.bin"
    path.write_bytes(make_payloads.build_object(hook, make_payloads.small_body()))
    return path


def run_variant(
    tmp: Path, name: str, payload: Path, opts: argparse.Namespace
) -> list[dict[str, Any]]:
    extra = ["--log-level", "warning", "--async-concurrency", str(opts.async_concurrency)]
    server = bench.start_tykworker(tmp, f"async-{name}", opts.workers, False, extra)
    rows = []
    with bench.running(server, payload, 60.0):
        for c in opts.concurrency:
            res = bench.measure(server, payload, c, opts, expect="X-Bench")
            lat = res["latency_us"]
            bench.log(
                f"{name:5} C={c:<4} {res['calls_per_s']:8.0f} calls/s  p50 {lat['p50']} µs"
                f"  p99 {lat['p99']} µs  cpu {res['server_cpu_us_per_call']} µs/call"
            )
            rows.append({"variant": name, "c": c, **res})
    return rows


def report(rows: list[dict[str, Any]], opts: argparse.Namespace) -> str:
    lines = [
        "| hook | C | calls/s | p50 ms | p99 ms | server CPU µs/call | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lat = r["latency_us"]
        lines.append(
            f"| {VARIANTS[r['variant']]} ({r['variant']}) | {r['c']} | {r['calls_per_s']:,.0f}"
            f" | {lat['p50'] / 1000:.1f} | {lat['p99'] / 1000:.1f}"
            f" | {r['server_cpu_us_per_call']} | {r['error_total']} |"
        )
    lines += [
        "",
        f"Command: `python bench/async.py {' '.join(sys.argv[1:])}`; {opts.workers} workers,"
        f" async_concurrency {opts.async_concurrency}, {opts.duration:g} s per run after"
        f" {opts.warmup:g} s warm-up; grpc-go closed loop, 1 connection.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 s runs, 0.5 s warm-up")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--async-concurrency", type=int, default=256)
    ap.add_argument("--concurrency", default="1,64,512", help="comma-separated C values")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--variants", default="async,sync", help="subset of async,sync")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    opts = ap.parse_args(argv)
    if opts.quick:
        opts.duration, opts.warmup = 2.0, 0.5
    opts.concurrency = [int(c) for c in str(opts.concurrency).split(",") if c]
    opts.variants = [v for v in str(opts.variants).split(",") if v]
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    bench.ensure_loadgen(False)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tw-async-") as t:
        tmp = Path(t)
        for name in opts.variants:
            rows += run_variant(tmp, name, write_payload(tmp, VARIANTS[name]), opts)
    if opts.out is not None:
        opts.out.write_text(json.dumps(rows, indent=2))
    print(report(rows, opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
