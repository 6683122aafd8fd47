"""Fairness of pipelining: trivial calls next to a few slow ones, pipelining on and off.

    python bench/fairness.py                 # 3 interleaved rounds of 5 s; ~2 min
    python bench/fairness.py --quick         # 1 round of 3 s
    python bench/fairness.py --turns-slow    # a fast hook that turns slow now and then

One ``tykworker serve --workers 2`` per variant (``--pipeline-depth 4``, the default, and
``--pipeline-depth 1``, pipelining off), two grpc-go load generators at once on the same
server: 63 goroutines calling the trivial hook and 1 calling ``Blocking`` (50 ms of
``time.sleep``), so about 1 % of calls are slow at C = 64. The question pipelining must
answer (issue: "no call may wait behind a slow call while another worker is idle"): the
trivial calls' p99 with pipelining must be no worse than without it. Reported: calls/s and
p50/p99/max of each stream, per variant (median of rounds), and the ratio of trivial p99.

``--turns-slow``: the case pipelining cannot see coming. One stream of 64 goroutines calls
``Fickle`` (bench/plugins/bench_hooks.py): ``Trivial``, but one call in 1,000 per worker
sleeps 10 ms. The hook's average stays fast, so it is pipelined, and the calls a worker was
sent behind a call that turned slow wait for it (the front cannot take them back: they are
in the worker's socket). What that costs is the p99 of those calls against pipelining off,
where the other worker would have taken them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # bench/run.py: server start-up, loadgen, payloads


def one_round(
    tmp: Path, payloads: dict[str, Path], extra: list[str], seconds: float, turns_slow: int
) -> dict[str, Any]:
    """One variant's run; ``turns_slow``: that many goroutines of ``Fickle`` alone (0: the
    trivial and Blocking streams)."""
    server = bench.start_tykworker(tmp, "fair", 2, False, ["--log-level", "warning", *extra])
    with bench.running(server, payloads["trivial"], 60.0):
        common = ["-target", server.target, "-duration", f"{seconds}s", "-warmup", "1s"]
        if turns_slow:
            return {
                "trivial": bench.loadgen(
                    [*common, "-payload", str(payloads["fickle"]), "-c", str(turns_slow)], 120
                )
            }
        slow = subprocess.Popen(
            [str(bench.LOADGEN), *common, "-payload", str(payloads["blocking"]), "-c", "1"],
            stdout=subprocess.PIPE,
            text=True,
        )
        fast = bench.loadgen([*common, "-payload", str(payloads["trivial"]), "-c", "63"], 120)
        out, _ = slow.communicate(timeout=120)
    return {"trivial": fast, "blocking": json.loads(out)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s")
    ap.add_argument(
        "--turns-slow",
        action="store_true",
        help="a fast hook that sleeps 10 ms on 1 call in 1,000, alone (no Blocking stream)",
    )
    ap.add_argument("-c", "--concurrency", type=int, default=64, help="goroutines of --turns-slow")
    ap.add_argument(
        "--depth", type=int, default=4, help="--pipeline-depth of the pipelined variant"
    )
    opts = ap.parse_args(argv)
    if opts.quick:
        opts.rounds, opts.duration = 1, 3.0
    variants = {
        "pipelined": ["--pipeline-depth", str(opts.depth)],
        "no pipelining": ["--pipeline-depth", "1"],
    }
    bench.ensure_loadgen(False)
    rows: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="tw-fair-") as t:
        tmp = Path(t)
        payloads = bench.write_payloads(tmp / "payloads")
        for n in range(1, opts.rounds + 1):
            for name, extra in variants.items():
                r = one_round(
                    tmp, payloads, extra, opts.duration, opts.concurrency if opts.turns_slow else 0
                )
                rows[name].append(r)
                lat = r["trivial"]["latency_us"]
                slow = (
                    ""
                    if opts.turns_slow
                    else f"; blocking p99 {r['blocking']['latency_us']['p99']} µs"
                )
                bench.log(
                    f"round {n} {name:14} trivial {r['trivial']['calls_per_s']:7.0f}/s"
                    f" p99 {lat['p99']} µs{slow}"
                )

    def med(name: str, stream: str, key: str) -> float:
        values = [
            r[stream]["calls_per_s"] if key == "rate" else r[stream]["latency_us"][key]
            for r in rows[name]
        ]
        return float(statistics.median(values))

    def failed(name: str) -> int:
        """Calls of every stream and round that failed (an error, no answer, or a reply
        without the hook's ``X-Bench`` header)."""
        return sum(
            r["error_total"] + r.get("hung", 0) + r.get("replies_bad", 0)
            for run in rows[name]
            for r in run.values()
        )

    fast = "fickle" if opts.turns_slow else "trivial"
    # (stream, key, column) of each column after the variant's name
    columns = [
        ("trivial", k, f"{fast} {c}")
        for k, c in (("rate", "calls/s"), ("p50", "p50 µs"), ("p99", "p99 µs"), ("max", "max µs"))
    ]
    if not opts.turns_slow:
        columns += [
            ("blocking", "rate", "blocking calls/s"),
            ("blocking", "p99", "blocking p99 µs"),
        ]
    lines = [
        "| variant | " + " | ".join(c for _, _, c in columns) + " | failed |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    for name in variants:
        cells = [f"{med(name, stream, key):,.0f}" for stream, key, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {failed(name)} |")
    ratio = med("pipelined", "trivial", "p99") / max(med("no pipelining", "trivial", "p99"), 1)
    load = (
        f"C = {opts.concurrency} Fickle (10 ms on 1 call in 1,000 per worker)"
        if opts.turns_slow
        else "C = 63 trivial + 1 Blocking"
    )
    lines += [
        "",
        f"{fast.capitalize()} p99, pipelined / not: {ratio:.2f}x (target: <= 1.0).",
        f"Command: `python bench/fairness.py {' '.join(sys.argv[1:])}`; {opts.rounds} interleaved"
        f" round(s) of {opts.duration:g} s, median; 2 workers; grpc-go, {load}.",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
