"""Where tykworker's CPU goes at gateway load: one host, one hook, per-process figures.

    python bench/profile_gateway.py [--hook trivial] [--seconds 10] [--workers 2]
        [--connections 32] [--tool none|py-spy|perf|strace]

Uses bench/gateway.py's parts (redis, the Go upstream, the real gateway, tykworker on the
bench's interpreter, wrk) and prints, over one wrk run after a 3 s warm-up: requests/s and
p50, the machine's idle/user/system share, the gateway's, upstream's and wrk's CPU per
request, and for each process of the tykworker tree its user and system CPU, its
voluntary/involuntary context switches and its minor page faults per request.

``--tool py-spy`` also records each front/worker process (``py-spy record -f raw``, files
``bench/out/spy-PID.txt``; py-spy counts time idle in the event loop's C code as the loop's
own), ``--tool perf`` the front and the first worker (``perf record -g``,
``bench/out/perf-PID.data``), ``--tool strace`` their system calls (``strace -c``,
``bench/out/strace-PID.txt``). Set ``TYKWORKER_PURE=1`` to profile the sources where the hot
modules are compiled. A profiling aid, not a benchmark: compare builds by alternating runs
(BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway as g

OUT = Path(__file__).resolve().parent / "out"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hook", default="trivial", choices=sorted(g.HOOKS))
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--tool", default="none", choices=("none", "py-spy", "perf", "strace"))
    opts = ap.parse_args()
    bench = g.parse_args(["--workers", str(opts.workers)])
    python = g.host_python(bench.python)
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tw-profile-") as t:
        tmp = Path(t)
        redis, redis_port = g.start_redis(tmp)
        upstream, upstream_port = g.start_upstream(tmp)
        rig = g.Rig(g.gateway_binary(), tmp, redis_port, upstream, upstream_port, python, bench)
        try:
            with g.host_running(rig, "tykworker", [opts.hook]) as (gateway, host, port):
                assert host is not None
                script = g.wrk_script(tmp, opts.hook)
                url = f"http://127.0.0.1:{port}/{opts.hook}/"
                g.run_wrk(url, script, 3, opts.connections)  # warm-up
                root = psutil.Process(host.popen.pid)
                procs = [root, *root.children(recursive=True)]
                names = {p.pid: " ".join(p.cmdline())[:60] for p in procs}
                before = {p.pid: (p.cpu_times(), p.num_ctx_switches(), _faults(p)) for p in procs}
                tools = _start_tools(opts.tool, procs[1:], opts.seconds)
                machine0, gw0, up0 = psutil.cpu_times(), gateway.cpu(), upstream.cpu()
                result = g.run_wrk(url, script, opts.seconds, opts.connections)
                machine1, gw1, up1 = psutil.cpu_times(), gateway.cpu(), upstream.cpu()
                for tool in tools:
                    tool.wait()
                n = max(result["requests"], 1.0)
                total = sum(machine1) - sum(machine0)
                share = {
                    f: (getattr(machine1, f) - getattr(machine0, f)) / total * 100
                    for f in ("idle", "user", "system", "softirq")
                }
                print(f"requests/s {result['rps']:.0f}  p50 {result['p50_us']:.0f} µs")
                print("machine " + "  ".join(f"{k} {v:.1f}%" for k, v in share.items()))
                print(
                    f"CPU µs per request: gateway {g.cpu_delta(gw0, gw1) / n * 1e6:.1f}  "
                    f"upstream {g.cpu_delta(up0, up1) / n * 1e6:.1f}  "
                    f"wrk {result['cpu_wrk_s'] / n * 1e6:.1f}"
                )
                for p in procs:
                    (c0, x0, f0), c1, x1 = before[p.pid], p.cpu_times(), p.num_ctx_switches()
                    print(
                        f"{p.pid} {names[p.pid]:60} user {(c1.user - c0.user) / n * 1e6:7.1f}"
                        f" sys {(c1.system - c0.system) / n * 1e6:7.1f}"
                        f" vcs/req {(x1.voluntary - x0.voluntary) / n:.2f}"
                        f" ivcs/req {(x1.involuntary - x0.involuntary) / n:.2f}"
                        f" minflt/req {(_faults(p) - f0) / n:.1f}"
                    )
        finally:
            upstream.stop()
            redis.stop()
    return 0


def _faults(proc: psutil.Process) -> int:
    """Minor page faults of ``proc`` so far (/proc/PID/stat field 10): a process that
    keeps mapping fresh memory for each call shows them per request."""
    stat = Path(f"/proc/{proc.pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[7])


def _start_tools(
    tool: str, procs: list[psutil.Process], seconds: float
) -> list[subprocess.Popen[bytes]]:
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    if tool == "py-spy":
        return [
            subprocess.Popen(
                ["py-spy", "record", "-r", "400", "-f", "raw", "--nonblocking",
                 "-o", str(OUT / f"spy-{p.pid}.txt"), "-d", str(int(seconds)), "-p", str(p.pid)],
                **quiet,
            )
            for p in procs
        ]  # fmt: skip
    if tool == "perf":
        return [
            subprocess.Popen(
                ["perf", "record", "-F", "2000", "-g", "-o", str(OUT / f"perf-{p.pid}.data"),
                 "-p", str(p.pid), "--", "sleep", str(int(seconds))],
                **quiet,
            )
            for p in procs[:2]
        ]  # fmt: skip
    if tool == "strace":  # system call counts and times of the front and the first worker
        return [
            subprocess.Popen(
                ["timeout", "-s", "INT", str(int(seconds)), "strace", "-c", "-f", "-o",
                 str(OUT / f"strace-{p.pid}.txt"), "-p", str(p.pid)],
                **quiet,
            )
            for p in procs[:2]
        ]  # fmt: skip
    return []


if __name__ == "__main__":
    sys.exit(main())
