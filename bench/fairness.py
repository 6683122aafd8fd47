"""Fairness of pipelining: trivial calls next to a few slow ones, pipelining on and off.

    python bench/fairness.py                 # 3 interleaved rounds of 5 s; ~2 min
    python bench/fairness.py --quick         # 1 round of 3 s

One ``tykworker serve --workers 2`` per variant (``--pipeline-depth 4``, the default, and
``--pipeline-depth 1``, pipelining off), two grpc-go load generators at once on the same
server: 63 goroutines calling the trivial hook and 1 calling ``Blocking`` (50 ms of
``time.sleep``), so about 1 % of calls are slow at C = 64. The question pipelining must
answer (issue: "no call may wait behind a slow call while another worker is idle"): the
trivial calls' p99 with pipelining must be no worse than without it. Reported: calls/s and
p50/p99/max of each stream, per variant (median of rounds), and the ratio of trivial p99.
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

VARIANTS = {"pipelined": ["--pipeline-depth", "4"], "no pipelining": ["--pipeline-depth", "1"]}


def one_round(
    tmp: Path, payloads: dict[str, Path], extra: list[str], seconds: float
) -> dict[str, Any]:
    server = bench.start_tykworker(tmp, "fair", 2, False, ["--log-level", "warning", *extra])
    with bench.running(server, payloads["trivial"], 60.0):
        common = ["-target", server.target, "-duration", f"{seconds}s", "-warmup", "1s"]
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
    opts = ap.parse_args(argv)
    if opts.quick:
        opts.rounds, opts.duration = 1, 3.0
    bench.ensure_loadgen(False)
    rows: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="tw-fair-") as t:
        tmp = Path(t)
        payloads = bench.write_payloads(tmp / "payloads")
        for n in range(1, opts.rounds + 1):
            for name, extra in VARIANTS.items():
                r = one_round(tmp, payloads, extra, opts.duration)
                rows[name].append(r)
                lat = r["trivial"]["latency_us"]
                bench.log(
                    f"round {n} {name:14} trivial {r['trivial']['calls_per_s']:7.0f}/s"
                    f" p99 {lat['p99']} µs; blocking p99 {r['blocking']['latency_us']['p99']} µs"
                )

    def med(name: str, stream: str, key: str) -> float:
        values = [
            r[stream]["calls_per_s"] if key == "rate" else r[stream]["latency_us"][key]
            for r in rows[name]
        ]
        return float(statistics.median(values))

    lines = [
        "| variant | trivial calls/s | trivial p50 µs | trivial p99 µs | trivial max µs"
        " | blocking calls/s | blocking p99 µs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in VARIANTS:
        lines.append(
            f"| {name} | {med(name, 'trivial', 'rate'):,.0f} | {med(name, 'trivial', 'p50'):,.0f}"
            f" | {med(name, 'trivial', 'p99'):,.0f} | {med(name, 'trivial', 'max'):,.0f}"
            f" | {med(name, 'blocking', 'rate'):,.0f} | {med(name, 'blocking', 'p99'):,.0f} |"
        )
    ratio = med("pipelined", "trivial", "p99") / max(med("no pipelining", "trivial", "p99"), 1)
    lines += [
        "",
        f"Trivial p99, pipelined / not: {ratio:.2f}x (target: <= 1.0).",
        f"Command: `python bench/fairness.py {' '.join(sys.argv[1:])}`; {opts.rounds} interleaved"
        f" round(s) of {opts.duration:g} s, median; 2 workers; grpc-go, C = 63 trivial"
        " + 1 Blocking.",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
