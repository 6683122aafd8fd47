"""tykworker versus the single-process grpcio baseline, side by side in one run.

    python bench/run.py [--quick] [--workers N] [--only baseline|tykworker] ...

For each scenario (trivial, cpu, blocking, big) it starts the baseline server
(bench/baseline_server.py) and tykworker (``python -m tykworker serve ...``) on fresh Unix
sockets, waits until a Dispatch to ``Trivial`` succeeds, and drives each with the Go load
generator (bench/loadgen, built into bench/bin/ on first use) at concurrency 1, 16 and 64
over ONE gRPC connection, like the gateway. Around every load run it samples the CPU time
of each server process (baseline; tykworker supervisor, front, workers summed) and the
client's own CPU, and derives server CPU µs per call. Then, for tykworker only: raw socket
versus gRPC for the trivial hook, a rolling-reload run (SIGHUP to the supervisor every
second under load, failed calls counted) and memory per worker (USS/PSS) with 1, 2 and 4
workers. Output: Markdown tables on stdout, everything in bench/out/results.json.

See bench/README.md for what each scenario means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LOADGEN_DIR = BENCH / "loadgen"
LOADGEN = BENCH / "bin" / "loadgen"
PLUGINS = BENCH / "plugins"
OUT = BENCH / "out"

sys.path.insert(0, str(BENCH))
from make_payloads import write_payloads  # noqa: E402

SCENARIOS = ("trivial", "cpu", "blocking", "big")
DESCRIPTIONS = {
    "trivial": "Trivial hook (sets one header), ~1 KB body",
    "cpu": "CpuBound hook (~1 ms pure Python), ~1 KB body",
    "blocking": "Blocking hook (sleep 50 ms), ~1 KB body",
    "big": "Trivial hook, 1 MiB body (~2 MiB Object each way)",
}
READY_EXPECT = "X-Bench"  # every bench hook sets this header


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- load generator ----------------------------------------------------------------------------


def ensure_loadgen(rebuild: bool) -> Path:
    sources = [*list(LOADGEN_DIR.glob("*.go")), LOADGEN_DIR / "go.mod", LOADGEN_DIR / "go.sum"]
    newest = max(p.stat().st_mtime for p in sources if p.exists())
    if rebuild or not LOADGEN.exists() or LOADGEN.stat().st_mtime < newest:
        go = shutil.which("go")
        if go is None:
            raise SystemExit("bench: the Go toolchain (go) is needed to build bench/loadgen")
        log("building bench/bin/loadgen")
        LOADGEN.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([go, "build", "-o", str(LOADGEN), "."], cwd=LOADGEN_DIR, check=True)
    return LOADGEN


def loadgen(args: list[str], timeout: float) -> dict[str, Any]:
    proc = subprocess.run(
        [str(LOADGEN), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"loadgen {args} failed ({proc.returncode}): {proc.stderr.strip()}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


# --- servers -----------------------------------------------------------------------------------


@dataclass
class Server:
    kind: str  # "baseline" or "tykworker"
    proc: subprocess.Popen[bytes]
    socket: Path
    raw_socket: Path | None
    log_path: Path
    argv: list[str]
    logfile: Any = field(repr=False, default=None)

    @property
    def target(self) -> str:
        return f"unix://{self.socket}"

    def processes(self) -> dict[int, tuple[str, psutil.Process]]:
        """pid -> (role, process) for the server and all its descendants."""
        out: dict[int, tuple[str, psutil.Process]] = {}
        try:
            root = psutil.Process(self.proc.pid)
            out[root.pid] = ("server" if self.kind == "baseline" else "supervisor", root)
            for child in root.children(recursive=True):
                out[child.pid] = (classify(child), child)
        except psutil.Error:
            pass
        return out


def classify(proc: psutil.Process) -> str:
    """Role of a tykworker child process from its title (setproctitle) or command line."""
    try:
        title = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return "other"
    text = title.lower().replace("tykworker", "").replace("--workers", "")
    if re.search(r"\bfront\b", text):
        return "front"
    if re.search(r"\bworker\b", text):
        return "workers"
    return "other"


def start_baseline(tmp: Path, tag: str, threads: int) -> Server:
    sock = tmp / f"base-{tag}.sock"
    argv = [
        sys.executable,
        str(BENCH / "baseline_server.py"),
        "--socket",
        str(sock),
        "--threads",
        str(threads),
        "--middleware",
        str(PLUGINS),
    ]
    return _spawn("baseline", argv, sock, None, tmp / f"base-{tag}.log")


def start_tykworker(
    tmp: Path,
    tag: str,
    workers: int,
    raw: bool,
    extra: list[str],
    env: dict[str, str] | None = None,
) -> Server:
    sock = tmp / f"tw-{tag}.sock"
    raw_sock = tmp / f"tw-{tag}.raw.sock" if raw else None
    events = tmp / "event_handlers"
    events.mkdir(exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "tykworker",
        "serve",
        "--socket",
        str(sock),
        "--middleware",
        str(PLUGINS),
        "--workers",
        str(workers),
        "--event-handlers",
        str(events),
    ]
    if raw_sock is not None:
        argv += ["--raw-socket", str(raw_sock)]
    argv += extra
    return _spawn("tykworker", argv, sock, raw_sock, tmp / f"tw-{tag}.log", env)


def _spawn(
    kind: str,
    argv: list[str],
    sock: Path,
    raw: Path | None,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
) -> Server:
    logfile = log_path.open("wb")
    env = {**os.environ, **(extra_env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
    )
    return Server(kind, proc, sock, raw, log_path, argv, logfile)


def wait_ready(server: Server, payload: Path, deadline_s: float) -> None:
    """Poll the socket with a real Dispatch to Trivial until it succeeds or the deadline."""
    start = time.monotonic()
    while not server.socket.exists():
        if server.proc.poll() is not None:
            break
        if time.monotonic() - start > deadline_s:
            break
        time.sleep(0.05)
    left = max(1.0, deadline_s - (time.monotonic() - start))
    if server.proc.poll() is None:
        try:
            res = loadgen(
                [
                    "-target",
                    server.target,
                    "-payload",
                    str(payload),
                    "-expect",
                    READY_EXPECT,
                    "-wait",
                    f"{left:.1f}s",
                ],
                timeout=left + 10,
            )
            if res.get("ready"):
                return
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
    tail = server.log_path.read_text(errors="replace")[-2000:]
    stop(server)
    raise RuntimeError(
        f"{server.kind} not ready within {deadline_s}s: {shlex.join(server.argv)}\n{tail}"
    )


def stop(server: Server, timeout: float = 15.0) -> None:
    if server.proc.poll() is None:
        try:
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{server.kind} did not stop in {timeout}s; SIGKILL to its process group")
            with suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
    # leftovers of the session we created (e.g. workers orphaned by a crash)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(server.proc.pid, signal.SIGKILL)
    if server.logfile is not None:
        server.logfile.close()


def settle(server: Server, quiet_pct: float = 5.0, max_wait: float = 15.0) -> None:
    """After the first answer, wait until the server's processes are idle (other workers
    may still be importing plugins), so that start-up CPU is not billed to the first run."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        before = cpu_snapshot(server)
        time.sleep(0.25)
        used = sum(cpu_delta(before, cpu_snapshot(server)).values())
        if 100 * used / 0.25 < quiet_pct:
            return


@contextmanager
def running(server: Server, ready_payload: Path, deadline_s: float) -> Iterator[Server]:
    try:
        wait_ready(server, ready_payload, deadline_s)
        settle(server)
        yield server
    finally:
        stop(server)


# --- CPU sampling --------------------------------------------------------------------------------


def cpu_snapshot(server: Server) -> dict[int, tuple[str, float]]:
    snap: dict[int, tuple[str, float]] = {}
    for pid, (role, proc) in server.processes().items():
        try:
            t = proc.cpu_times()
            snap[pid] = (role, t.user + t.system)
        except psutil.Error:
            pass
    return snap


def cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds by role between two snapshots. A process that exited in between loses
    what it used since ``before`` (psutil cannot read a reaped process)."""
    roles: dict[str, float] = {}
    for pid, (role, t) in after.items():
        t0 = before.get(pid, (role, 0.0))[1]
        roles[role] = roles.get(role, 0.0) + max(0.0, t - t0)
    return roles


def measure(
    server: Server,
    payload: Path,
    concurrency: int,
    opts: argparse.Namespace,
    *,
    mode: str = "grpc",
    conns: int = 1,
    expect: str | None = READY_EXPECT,
    duration: float | None = None,
    trace: str = "",
) -> dict[str, Any]:
    duration = opts.duration if duration is None else duration
    target = server.target if mode == "grpc" else str(server.raw_socket)
    args = [
        "-mode",
        mode,
        "-target",
        target,
        "-payload",
        str(payload),
        "-c",
        str(concurrency),
        "-conns",
        str(conns),
        "-duration",
        f"{duration}s",
        "-warmup",
        f"{opts.warmup}s",
    ]
    if expect:
        args += ["-expect", expect]
    if trace:
        args += ["-trace", trace]
    before = cpu_snapshot(server)
    t0 = time.monotonic()
    res = loadgen(args, timeout=duration + opts.warmup + 60)
    wall = time.monotonic() - t0
    roles = cpu_delta(before, cpu_snapshot(server))
    total_calls = res["ok"] + res["error_total"] + res.get("warmup_calls", 0)
    server_cpu = sum(roles.values())
    res["server_cpu_s"] = {k: round(v, 4) for k, v in sorted(roles.items())}
    res["server_cpu_pct"] = {k: round(100 * v / wall, 1) for k, v in sorted(roles.items())}
    res["server_cpu_total_pct"] = round(100 * server_cpu / wall, 1)
    res["server_cpu_us_per_call"] = (
        round(1e6 * server_cpu / total_calls, 1) if total_calls else None
    )
    res["wall_s"] = round(wall, 3)
    return res


# --- scenarios -----------------------------------------------------------------------------------


def run_scenarios(
    opts: argparse.Namespace, tmp: Path, payloads: dict[str, Path], results: dict[str, Any]
) -> None:
    ready = payloads["trivial"]
    for scenario in opts.scenarios:
        payload = payloads[scenario]
        blocking = scenario == "blocking"
        workers = opts.blocking_workers if blocking else opts.workers
        threads = opts.blocking_workers if blocking else opts.threads
        for kind, label, front_args in server_variants(opts):
            tag = f"{scenario}-{label}"
            if kind == "baseline":
                server = start_baseline(tmp, tag, threads)
            else:
                raw = opts.raw and scenario == "trivial" and label == tykworker_label(opts)
                server = start_tykworker(tmp, tag, workers, raw, [*opts.tw_args, *front_args])
            with running(server, ready, opts.ready_timeout):
                for c in opts.concurrency:
                    log(f"{scenario:8s} {label:9s} C={c}")
                    res = measure(server, payload, c, opts)
                    res.update(
                        scenario=scenario,
                        server=label,
                        workers=workers if kind == "tykworker" else None,
                        threads=threads if kind == "baseline" else None,
                    )
                    results["runs"].append(res)
                if scenario == "trivial" and opts.conns > 1:
                    c = max(opts.concurrency)
                    log(f"{scenario:8s} {label:9s} C={c} conns={opts.conns}")
                    res = measure(server, payload, c, opts, conns=opts.conns)
                    res.update(scenario="trivial-conns", server=label)
                    results["runs"].append(res)
                if kind == "tykworker" and server.raw_socket is not None:
                    for c in opts.concurrency:
                        log(f"{scenario:8s} raw       C={c}")
                        try:
                            res = measure(server, payload, c, opts, mode="raw")
                        except RuntimeError as exc:
                            log(f"raw socket run failed: {exc}")
                            continue
                        res.update(scenario="trivial-raw", server="tykworker-raw", ref=label)
                        results["runs"].append(res)


def server_variants(opts: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(kind, label, extra serve args) per server to run: ``--fronts native,grpcio`` runs
    tykworker once per front, labelled ``tykworker-native`` etc."""
    out: list[tuple[str, str, list[str]]] = []
    for kind in opts.servers:
        if kind == "tykworker" and opts.fronts:
            out += [(kind, f"tykworker-{front}", ["--front", front]) for front in opts.fronts]
        else:
            out.append((kind, kind, []))
    return out


def tykworker_label(opts: argparse.Namespace) -> str:
    """The tykworker variant that also runs the raw, reload and memory parts."""
    return f"tykworker-{opts.fronts[0]}" if opts.fronts else "tykworker"


def tykworker_args(opts: argparse.Namespace) -> list[str]:
    return [*opts.tw_args, *(["--front", opts.fronts[0]] if opts.fronts else [])]


def run_reload(
    opts: argparse.Namespace, tmp: Path, payloads: dict[str, Path], results: dict[str, Any]
) -> None:
    """Trivial hook at C=16 while the supervisor gets SIGHUP every second."""
    server = start_tykworker(tmp, "reload", opts.workers, False, tykworker_args(opts))
    with running(server, payloads["trivial"], opts.ready_timeout):
        hups = 0
        done = threading.Event()

        def hupper() -> None:
            nonlocal hups
            while not done.wait(1.0):
                if server.proc.poll() is not None:
                    return
                server.proc.send_signal(signal.SIGHUP)
                hups += 1

        log(f"reload   tykworker C=16 SIGHUP every 1 s for {opts.reload_duration}s")
        thread = threading.Thread(target=hupper, daemon=True)
        thread.start()
        try:
            res = measure(server, payloads["trivial"], 16, opts, duration=opts.reload_duration)
        finally:
            done.set()
            thread.join()
        res.update(
            scenario="reload",
            server="tykworker",
            sighups=hups,
            server_alive=server.proc.poll() is None,
        )
        results["reload"] = res


#: (label, tracing on in tykworker, trace context sent by the client)
TRACING_VARIANTS = (
    ("off, no context", False, False),
    ("off, context sent", False, True),
    ("on, no context", True, False),
    ("on, context sent", True, True),
)


@contextmanager
def span_sink() -> Iterator[str]:
    """An OTLP http/protobuf endpoint that accepts every export and keeps nothing (in this
    process: its CPU is not counted as the server's). Yields its base URL."""

    class Sink(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_tracing(
    opts: argparse.Namespace, tmp: Path, payloads: dict[str, Path], results: dict[str, Any]
) -> None:
    """Trivial hook, tracing off and on, calls with and without a W3C trace context (a new
    one per call, as the gateway sends): the extra server CPU per call of tracing."""
    with span_sink() as endpoint:
        for label, on, sent in TRACING_VARIANTS:
            env = {"TYKWORKER_TRACING": "off"}
            if on:
                env = {
                    "TYKWORKER_TRACING": "on",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                }
            tag = "tracing-" + label.replace(", ", "-").replace(" ", "-")
            server = start_tykworker(tmp, tag, opts.workers, False, tykworker_args(opts), env)
            with running(server, payloads["trivial"], opts.ready_timeout):
                for c in opts.concurrency:
                    log(f"tracing  {label:18s} C={c}")
                    res = measure(server, payloads["trivial"], c, opts, trace="w3c" if sent else "")
                    res.update(scenario="trivial-tracing", server="tykworker", tracing=label)
                    results["runs"].append(res)


def tracing_report(runs: list[dict[str, Any]]) -> list[str]:
    """The tracing table (``--tracing``), CPU per call against tracing off without context."""
    rows = [r for r in runs if r["scenario"] == "trivial-tracing"]
    if not rows:
        return []
    lines = [
        "",
        "## Tracing (trivial hook; W3C context per call; spans to a local OTLP sink)",
        "",
        "| tracing | C | calls/s | p50 µs | p99 µs | server CPU µs/call | by process "
        "| CPU/call vs off |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        base = next(
            (
                b
                for b in rows
                if b["tracing"] == TRACING_VARIANTS[0][0] and b["concurrency"] == r["concurrency"]
            ),
            None,
        )
        off = base["server_cpu_us_per_call"] if base else None
        ratio = _ratio(r["server_cpu_us_per_call"], off)
        lines.append(
            f"| {r['tracing']} | {r['concurrency']} | {_fmt(r['calls_per_s'])} "
            f"| {_fmt(r['latency_us']['p50'])} | {_fmt(r['latency_us']['p99'])} "
            f"| {_fmt(r['server_cpu_us_per_call'], 1)} | {_roles(r)} | {ratio} |"
        )
    return lines


def mem_info(proc: psutil.Process) -> dict[str, float]:
    m = proc.memory_full_info()
    return {
        "uss_mb": round(m.uss / 2**20, 2),
        "pss_mb": round(getattr(m, "pss", 0) / 2**20, 2),
        "rss_mb": round(m.rss / 2**20, 2),
    }


def run_memory(
    opts: argparse.Namespace, tmp: Path, payloads: dict[str, Path], results: dict[str, Any]
) -> None:
    mem: dict[str, Any] = {}
    idle: dict[str, Any] = {}
    warm = ["-payload", str(payloads["trivial"]), "-n", "2000", "-expect", READY_EXPECT]
    if "tykworker" in opts.servers:
        for n in opts.memory_workers:
            server = start_tykworker(tmp, f"mem{n}", n, False, tykworker_args(opts))
            with running(server, payloads["trivial"], opts.ready_timeout):
                loadgen(["-target", server.target, "-c", str(max(n, 4)), *warm], timeout=60)
                time.sleep(0.3)
                by_role: dict[str, list[dict[str, float]]] = {}
                for _pid, (role, proc) in sorted(server.processes().items()):
                    with suppress(psutil.Error):
                        by_role.setdefault(role, []).append(mem_info(proc))
                mem[f"tykworker_N{n}"] = by_role
                idle[f"tykworker_N{n}"] = idle_cpu(server, opts.idle_seconds)
                log(f"memory   tykworker N={n}: {by_role.get('workers')}")
    if "baseline" in opts.servers:
        server = start_baseline(tmp, "mem", opts.threads)
        with running(server, payloads["trivial"], opts.ready_timeout):
            loadgen(["-target", server.target, "-c", "16", *warm], timeout=60)
            mem["baseline"] = {"server": [mem_info(psutil.Process(server.proc.pid))]}
            idle["baseline"] = idle_cpu(server, opts.idle_seconds)
    results["memory"] = mem
    results["idle_cpu_pct"] = idle


def idle_cpu(server: Server, seconds: float) -> dict[str, float]:
    """CPU % (of one core) by role while no call arrives: the cost of just being up."""
    before = cpu_snapshot(server)
    time.sleep(seconds)
    roles = cpu_delta(before, cpu_snapshot(server))
    return {k: round(100 * v / seconds, 2) for k, v in sorted(roles.items())}


# --- report --------------------------------------------------------------------------------------


def _fmt(x: float | None, nd: int = 0) -> str:
    if x is None:
        return "—"
    return f"{x:,.{nd}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "—"
    return f"{a / b:.2f}x"


def _find(runs: list[dict[str, Any]], scenario: str, server: str, c: int) -> dict[str, Any] | None:
    for r in runs:
        if r["scenario"] == scenario and r["server"] == server and r["concurrency"] == c:
            return r
    return None


def _roles(r: dict[str, Any]) -> str:
    pct = r.get("server_cpu_pct", {})
    return " ".join(f"{k} {v:.0f}%" if v >= 10 else f"{k} {v:.1f}%" for k, v in pct.items())


def report(results: dict[str, Any]) -> str:
    runs: list[dict[str, Any]] = results["runs"]
    m = results["machine"]
    lines = [
        "## Machine",
        "",
        f"{m['cpu_model']}, {m['cpus']} CPUs, {m['mem_gb']} GB RAM; Linux {m['kernel']}; "
        f"Python {m['python']}, grpcio {m['grpcio']}, protobuf {m['protobuf']}; {m['go']}",
        "",
        f"Command: `{results['command']}`",
        "",
        "## Throughput and latency (one gRPC connection, closed loop)",
        "",
        "| scenario | C | server | calls/s | p50 µs | p99 µs | failed | server CPU µs/call "
        "| server CPU by process | client CPU | calls/s ratio | CPU/call ratio |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    seen: list[tuple[str, int]] = []
    for r in runs:
        key = (r["scenario"], r["concurrency"])
        if key not in seen and r["scenario"] != "trivial-tracing":  # its own table
            seen.append(key)
    for scenario, c in seen:
        for r in runs:
            if r["scenario"] != scenario or r["concurrency"] != c:
                continue
            if r["server"] == "tykworker-raw":  # raw socket vs tykworker's own gRPC path
                ref = _find(runs, "trivial", r.get("ref", "tykworker"), c)
                tag = " (vs gRPC)"
            else:
                ref, tag = _find(runs, scenario, "baseline", c), ""
            lat = r["latency_us"]
            failed = r["error_total"] + r.get("hung", 0) + r.get("replies_bad", 0)
            ratio = cpu_ratio = ""
            if r["server"] != "baseline" and ref is not None:
                ratio = _ratio(r["calls_per_s"], ref["calls_per_s"]) + tag
                cpu_ratio = _ratio(r["server_cpu_us_per_call"], ref["server_cpu_us_per_call"]) + tag
            name = r["server"] + (
                f" ({r['conns']} conns)" if r.get("conns", 1) > 1 and r["mode"] == "grpc" else ""
            )
            lines.append(
                f"| {scenario} | {c} | {name} | {_fmt(r['calls_per_s'])} | {_fmt(lat['p50'])} "
                f"| {_fmt(lat['p99'])} | {failed} | {_fmt(r['server_cpu_us_per_call'])} "
                f"| {_roles(r)} | {_fmt(r['client_cpu_pct'])}% | {ratio} | {cpu_ratio} |"
            )
    lines += tracing_report(runs)
    rel = results.get("reload")
    if rel:
        lines += [
            "",
            "## Rolling reload (SIGHUP to the supervisor every second, trivial hook, C=16)",
            "",
            "| duration s | SIGHUPs | calls | calls/s | p50 µs | p99 µs | failed | errors | hung |",
            "|---:|---:|---:|---:|---:|---:|---:|---|---:|",
            f"| {rel['duration_s']:.1f} | {rel['sighups']} | {rel['calls']} "
            f"| {_fmt(rel['calls_per_s'])} | {_fmt(rel['latency_us']['p50'])} "
            f"| {_fmt(rel['latency_us']['p99'])} | {rel['error_total'] + rel['replies_bad']} "
            f"| {json.dumps(rel['errors'])} | {rel['hung']} |",
        ]
    mem = results.get("memory")
    if mem:
        lines += [
            "",
            "## Memory after 2000 warm-up calls (MiB; per process)",
            "",
            "| server | process | count | USS mean | PSS mean | RSS mean |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for name, roles in mem.items():
            for role, items in roles.items():
                n = len(items)

                def avg(k: str, items: list[dict[str, float]] = items, n: int = n) -> str:
                    return f"{sum(i[k] for i in items) / n:.1f}"

                lines.append(
                    f"| {name} | {role} | {n} | {avg('uss_mb')} | {avg('pss_mb')} "
                    f"| {avg('rss_mb')} |"
                )
    idle = results.get("idle_cpu_pct")
    if idle:
        lines += ["", "## Idle CPU (no calls; % of one core)", ""]
        lines += [f"* {name}: {_roles({'server_cpu_pct': roles})}" for name, roles in idle.items()]
    lines += [
        "",
        "Server CPU µs/call = CPU time of all server processes during the load run (warm-up "
        "included) / calls answered in it. CPU % is of one core over the run's wall time; "
        "2 cores = 200%. Client CPU is the Go load generator's own (measured phase). Ratios "
        "are tykworker/baseline from this run (raw rows: raw socket/tykworker gRPC). Failed = "
        "gRPC errors + hung calls + replies without the hook's header.",
    ]
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    import google.protobuf
    import grpc

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    go = shutil.which("go")
    go_version = (
        subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip()
        if go
        else "go: not found"
    )
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "go": go_version,
    }


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="tykworker vs single-process grpcio baseline (see bench/README.md)"
    )
    ap.add_argument("--quick", action="store_true", help="short runs (full run < ~2 min)")
    ap.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="tykworker workers (default: CPU count)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=16,
        help="baseline ThreadPoolExecutor max_workers (default 16)",
    )
    ap.add_argument(
        "--blocking-workers",
        type=int,
        default=16,
        help="workers (tykworker) and threads (baseline) for the blocking scenario",
    )
    ap.add_argument("--only", choices=("baseline", "tykworker"), help="run one server only")
    ap.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    ap.add_argument("--concurrency", default="1,16,64", help="comma-separated C values")
    ap.add_argument("--duration", type=float, help="seconds per load run (quick 2, default 5)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per load run")
    ap.add_argument(
        "--conns",
        type=int,
        default=8,
        help="extra trivial run at the largest C over this many connections (1=off)",
    )
    ap.add_argument("--no-raw", dest="raw", action="store_false", help="skip the raw-socket runs")
    ap.add_argument(
        "--no-reload", dest="reload", action="store_false", help="skip the rolling-reload run"
    )
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory runs")
    ap.add_argument("--reload-duration", type=float, help="seconds (quick 5, default 10)")
    ap.add_argument("--memory-workers", default="1,2,4", help="worker counts for memory")
    ap.add_argument(
        "--tracing",
        action="store_true",
        help="also run the trivial hook with tracing off/on, with and without a trace context",
    )
    ap.add_argument("--idle-seconds", type=float, help="idle CPU sample (quick 1, default 3)")
    ap.add_argument(
        "--tw-args",
        default="",
        help="extra arguments for `tykworker serve` (one shell-quoted string)",
    )
    ap.add_argument(
        "--fronts",
        default="",
        help="tykworker fronts to compare, e.g. native,grpcio (default: the default front)",
    )
    ap.add_argument("--ready-timeout", type=float, default=30.0, help="seconds to become ready")
    ap.add_argument("--rebuild", action="store_true", help="rebuild bench/bin/loadgen")
    ap.add_argument("--out", type=Path, default=OUT / "results.json")
    opts = ap.parse_args(argv)
    opts.duration = opts.duration or (2.0 if opts.quick else 5.0)
    opts.warmup = opts.warmup if opts.warmup is not None else (0.5 if opts.quick else 1.0)
    opts.reload_duration = opts.reload_duration or (5.0 if opts.quick else 10.0)
    opts.idle_seconds = opts.idle_seconds or (1.0 if opts.quick else 3.0)
    opts.scenarios = [s for s in opts.scenarios.split(",") if s]
    bad = set(opts.scenarios) - set(SCENARIOS)
    if bad:
        ap.error(f"unknown scenarios: {sorted(bad)}")
    opts.concurrency = [int(c) for c in opts.concurrency.split(",") if c]
    opts.memory_workers = [int(n) for n in opts.memory_workers.split(",") if n]
    opts.servers = [opts.only] if opts.only else ["baseline", "tykworker"]
    opts.tw_args = shlex.split(opts.tw_args)
    opts.fronts = [front for front in opts.fronts.split(",") if front]
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    ensure_loadgen(opts.rebuild)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    payloads = write_payloads(OUT / "payloads")
    results: dict[str, Any] = {
        "command": shlex.join(
            ["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "settings": {
            "workers": opts.workers,
            "threads": opts.threads,
            "blocking_workers": opts.blocking_workers,
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "concurrency": opts.concurrency,
            "servers": opts.servers,
            "tracing": opts.tracing,
            "fronts": opts.fronts,
        },
        "runs": [],
    }
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tykbench-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            run_scenarios(opts, tmp, payloads, results)
            if opts.reload and "tykworker" in opts.servers:
                run_reload(opts, tmp, payloads, results)
            if opts.tracing:
                run_tracing(opts, tmp, payloads, results)
            if opts.memory:
                run_memory(opts, tmp, payloads, results)
        finally:
            for name in os.listdir(tmp):  # keep server logs next to the results
                if name.endswith(".log"):
                    shutil.copy(tmp / name, OUT / name)
            results["elapsed_s"] = round(time.monotonic() - t0, 1)
            opts.out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    log(f"done in {results['elapsed_s']} s; results in {opts.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
