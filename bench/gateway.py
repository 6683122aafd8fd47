"""Gateway-level benchmark: what a Tyk user sees, through the real gateway.

    python bench/gateway.py                    # 3 interleaved rounds of 15 s; ~23 min
    python bench/gateway.py --quick            # 1 round of 4 s; ~3 min
    python bench/gateway.py --hosts tykworker,embedded --hooks trivial --duration 5

One run starts a real redis-server, a fast upstream (Go, ``bench/upstream``) and, per
plugin host, a real Tyk gateway (``$TYKWORKER_TEST_GATEWAY`` or ``../shared/tyk-gateway/
unpack``) in front of it, then drives each API with wrk (fixed connections) in interleaved
rounds. Plugin hosts:

* ``none``: the gateway without plugins (the ceiling);
* ``embedded``: Tyk's embedded Python driver, in the gateway's process (Debian's libpython
  3.11; plugins come from a bundle already on disk, as that driver requires);
* ``tykworker``: ``tykworker serve`` with ``--workers`` workers;
* ``grpcio``: the single-process grpcio server users write today (bench/baseline_server.py);
* ``go-echo``: a grpc-go server that runs no hook and answers each call with the request
  bytes (``bench/loadgen -serve``): the floor of any gRPC plugin host, so the gateway's own
  gRPC client and the wake-ups of a second process are in it but no plugin work. Its row
  is the ceiling tykworker can reach through the gRPC driver (``vs go-echo``); measured on
  ``trivial`` and ``big`` only (it cannot run ``cpu``'s work or answer ``auth``).

Hooks (bench/plugins/bench_hooks.py, the same code in every host): ``trivial`` (a Pre hook
adding a header), ``cpu`` (~1 ms of Python), ``auth`` (a custom-auth hook returning a
session), ``big`` (the trivial Pre hook with a 1 MiB request body). Every request but
``big`` carries the same ~1 KB JSON body.

The Python hosts run on one interpreter build (``--python``, default Debian's
``/usr/bin/python3.11``, the build the embedded driver links), in a venv under bench/bin
made on first use; the report names it. CPU µs per request is by process group: the
gateway, the plugin host (all its processes), the upstream, wrk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bench" / "bin"
PLUGINS = ROOT / "bench" / "plugins"
SHARED_GATEWAY = next(
    (
        p
        for p in (ROOT.parent / "shared" / "tyk-gateway", Path("/work/shared/tyk-gateway"))
        if p.is_dir()
    ),
    ROOT.parent / "shared" / "tyk-gateway",
)
HOSTS = ("none", "embedded", "tykworker", "grpcio", "go-echo", "tykworker-nopipe")
#: what ``go-echo`` (which runs no hook) is measured on
ECHO_HOOKS = ("trivial", "big")
#: host variants: name -> (host kind, extra ``tykworker serve`` flags)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "tykworker-nopipe": ("tykworker", ["--pipeline-depth", "1"]),  # pipelining off
    "tykworker-pure": ("tykworker", []),  # the sources, even where compiled (scripts/compile)
}
#: Environment of a variant's host, on top of this process's.
VARIANT_ENV: dict[str, dict[str, str]] = {"tykworker-pure": {"TYKWORKER_PURE": "1"}}


def kind_of(host: str) -> str:
    return VARIANTS.get(host, (host, []))[0]


HOOKS: dict[str, dict[str, Any]] = {
    "trivial": {"hook": "Trivial", "kind": "pre"},
    "cpu": {"hook": "CpuBound", "kind": "pre"},
    "auth": {"hook": "BenchAuth", "kind": "auth"},
    "big": {"hook": "Trivial", "kind": "pre", "body_bytes": 1 << 20},
}
JSON_BODY = json.dumps(
    {"items": [{"sku": f"SKU-{i:04d}", "qty": i, "price": i * 1.25} for i in range(20)]}
)


def log(msg: str) -> None:
    print(f"[gateway-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


# --- tools -------------------------------------------------------------------------------------


def gateway_binary() -> Path:
    if env := os.environ.get("TYKWORKER_TEST_GATEWAY"):
        return Path(env)
    unpack = SHARED_GATEWAY / "unpack"
    if not unpack.exists():
        raise SystemExit("no gateway: set TYKWORKER_TEST_GATEWAY or provide ../shared/tyk-gateway")
    out = subprocess.run([str(unpack)], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


def build_upstream() -> Path:
    target = BIN / "upstream"
    source = ROOT / "bench" / "upstream" / "main.go"
    if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
        log("building bench/bin/upstream")
        BIN.mkdir(parents=True, exist_ok=True)
        subprocess.run(["go", "build", "-o", str(target), "."], cwd=source.parent, check=True)
    return target


def host_python(python: str) -> Path:
    """A venv on ``python`` with tykworker installed (editable), made once."""
    base = Path(python).resolve()
    if base == Path(sys.executable).resolve():
        return Path(sys.executable)
    tag = hashlib.sha256(str(base).encode()).hexdigest()[:8]
    venv = BIN / f"venv-{base.name}-{tag}"
    exe = venv / "bin" / "python"
    if not exe.exists():
        log(f"creating {venv} on {base}")
        subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(exe),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-e",
                str(ROOT),
            ],
            check=True,
        )
    return exe


def interpreter_label(exe: Path) -> str:
    out = subprocess.run(
        [
            str(exe),
            "-c",
            "import sys, sysconfig; print(sys.version.split()[0], "
            "sysconfig.get_config_var('PY_ENABLE_SHARED'), sys.base_prefix)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    version, _, prefix = out.stdout.split()
    return f"Python {version} ({prefix})"


def build_label(exe: Path, env: dict[str, str]) -> str:
    """What of tykworker runs compiled on ``exe`` (``tykworker --version``)."""
    out = subprocess.run(
        [str(exe), "-m", "tykworker", "--version"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return out.stdout.strip().partition(", ")[2]


# --- processes ---------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.popen.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def cpu(self) -> dict[int, float]:
        times = {}
        for p in self.tree():
            try:
                t = p.cpu_times()
                times[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return times

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                for p in self.tree():
                    p.kill()
                self.popen.wait()


def spawn(name: str, argv: list[str], tmp: Path, **kw: Any) -> Proc:
    log_path = tmp / f"{name}.log"
    with open(log_path, "wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **kw)
    return Proc(name, popen, log_path)


def start_redis(tmp: Path) -> tuple[Proc, int]:
    port = free_port()
    proc = spawn(
        "redis",
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        tmp,
    )
    wait_for(lambda: _connects(port), "redis")
    return proc, port


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start_upstream(tmp: Path) -> tuple[Proc, int]:
    port = free_port()
    proc = spawn("upstream", [str(build_upstream()), "-listen", f"127.0.0.1:{port}"], tmp)
    wait_for(lambda: _connects(port), "upstream")
    return proc, port


def start_host(host: str, tmp: Path, python: Path, workers: int) -> tuple[Proc | None, Path]:
    sock = tmp / f"{host}.sock"
    kind, extra = VARIANTS.get(host, (host, []))
    if kind == "tykworker":
        argv = [
            str(python),
            "-m",
            "tykworker",
            "serve",
            "--socket",
            str(sock),
            "--workers",
            str(workers),
            "--middleware",
            str(PLUGINS),
            "--runtime-dir",
            str(tmp / "tw-run"),
            "--log-level",
            "warning",
            *extra,
        ]
    elif kind == "grpcio":
        argv = [
            str(python),
            str(ROOT / "bench" / "baseline_server.py"),
            "--socket",
            str(sock),
            "--middleware",
            str(PLUGINS),
        ]
    elif kind == "go-echo":
        from run import ensure_loadgen  # bench/run.py builds the load generator

        argv = [str(ensure_loadgen(rebuild=False)), "-serve", str(sock)]
    else:
        return None, sock
    proc = spawn(host, argv, tmp, cwd=tmp, env={**os.environ, **VARIANT_ENV.get(host, {})})
    wait_for(lambda: sock.exists() or proc.popen.poll() is not None, f"{kind} socket")
    if proc.popen.poll() is not None:
        raise RuntimeError(f"{kind} exited: {proc.log_path.read_text()[-2000:]}")
    return proc, sock


# --- the gateway -------------------------------------------------------------------------------


def api_definition(name: str, hook: dict[str, Any], host: str, upstream: int) -> dict[str, Any]:
    api: dict[str, Any] = {
        "name": f"bench-{name}",
        "api_id": f"bench-{name}",
        "org_id": "bench",
        "active": True,
        "use_keyless": hook["kind"] != "auth",
        "auth": {"auth_header_name": "Authorization"},
        "proxy": {
            "listen_path": f"/{name}/",
            "target_url": f"http://127.0.0.1:{upstream}/",
            "strip_listen_path": True,
        },
        "version_data": {
            "not_versioned": True,
            "versions": {"Default": {"name": "Default", "use_extended_paths": True}},
        },
    }
    if host == "none":
        return api
    if hook["kind"] == "auth":
        api["enable_coprocess_auth"] = True
    if host == "embedded":
        api["custom_middleware_bundle"] = f"bench-{name}.zip"
    else:
        api["custom_middleware"] = middleware_block(hook, "grpc")
    return api


def middleware_block(hook: dict[str, Any], driver: str) -> dict[str, Any]:
    block: dict[str, Any] = {"driver": driver}
    if hook["kind"] == "auth":
        block["auth_check"] = {"name": hook["hook"]}
    else:
        block["pre"] = [{"name": hook["hook"]}]
    return block


def write_bundle(middleware_path: Path, name: str, hook: dict[str, Any]) -> None:
    """An unpacked bundle where the embedded driver looks for it (md5 of the bundle name).

    The entry module must not be called ``middleware`` (Tyk's own ``tyk/middleware.py``
    would shadow it)."""
    bundle = f"bench-{name}.zip"
    folder = middleware_path / "bundles" / hashlib.md5(bundle.encode()).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLUGINS / "bench_hooks.py", folder / "bench_hooks.py")
    manifest = {
        "file_list": ["bench_hooks.py"],
        "custom_middleware": middleware_block(hook, "python"),
        "checksum": "",
        "signature": "",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def gateway_config(
    tmp: Path, host: str, sock: Path, redis_port: int, port: int, hooks: list[str], upstream: int
) -> Path:
    root = tmp / f"gw-{host}"
    apps, middleware = root / "apps", root / "middleware"
    for d in (apps, middleware):
        d.mkdir(parents=True, exist_ok=True)
    for name in hooks:
        hook = HOOKS[name]
        (apps / f"{name}.json").write_text(json.dumps(api_definition(name, hook, host, upstream)))
        if host == "embedded":
            write_bundle(middleware, name, hook)
    coprocess: dict[str, Any] = {"enable_coprocess": host != "none"}
    if kind_of(host) in ("tykworker", "grpcio", "go-echo"):
        coprocess["coprocess_grpc_server"] = f"unix://{sock}"
    if host == "embedded":
        coprocess["python_path_prefix"] = str(SHARED_GATEWAY)
        coprocess["python_version"] = "3.11"
    conf = {
        "listen_address": "127.0.0.1",
        "listen_port": port,
        "secret": "bench-secret",
        "template_path": str(SHARED_GATEWAY / "templates"),
        "app_path": str(apps),
        "middleware_path": str(middleware),
        "pid_file_location": str(root / "tyk.pid"),
        "storage": {"type": "redis", "host": "127.0.0.1", "port": redis_port},
        "enable_analytics": False,
        "max_idle_connections_per_host": 500,
        "bundle_base_url": "http://127.0.0.1:1/",
        "enable_bundle_downloader": True,
        "coprocess_options": coprocess,
    }
    path = root / "tyk.conf"
    path.write_text(json.dumps(conf, indent=2))
    return path


def start_gateway(
    binary: Path, conf: Path, tmp: Path, host: str, port: int, hooks: list[str]
) -> Proc:
    proc = spawn(
        f"gateway-{host}", [str(binary), "start", "--conf", str(conf)], tmp, cwd=conf.parent
    )
    hello = f"http://127.0.0.1:{port}/hello"
    wait_for(lambda: _status(hello, body=False) == 200, "gateway /hello", 60)
    for name in hooks:  # loaded = the listen path is routed (no 404)
        wait_for(
            lambda n=name: _status(f"http://127.0.0.1:{port}/{n}/", headers=_headers(n)) == 200,
            f"API {name} on {host}",
            60,
        )
    return proc


def _headers(name: str) -> dict[str, str]:
    return {"Authorization": "bench-key"} if HOOKS[name]["kind"] == "auth" else {}


def _status(url: str, headers: dict[str, str] | None = None, body: bool = True) -> int:
    data = JSON_BODY.encode() if body else None
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


# --- load ----------------------------------------------------------------------------------------


def wrk_script(tmp: Path, name: str) -> Path:
    hook = HOOKS[name]
    body = "a" * hook["body_bytes"] if "body_bytes" in hook else JSON_BODY
    (tmp / f"{name}.body").write_text(body)
    lines = [
        'wrk.method = "POST"',
        f'local f = io.open("{tmp / f"{name}.body"}", "rb")',
        "wrk.body = f:read('*a')",
        "f:close()",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if hook["kind"] == "auth":
        lines.append('wrk.headers["Authorization"] = "bench-key"')
    path = tmp / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _micros(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    return float(m[1]) * _UNITS[m[2]]


def parse_wrk(out: str) -> dict[str, float]:
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])}  # type: ignore[index]
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        result[f"p{pct}_us"] = _micros(m[1]) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non2xx"] = float(m[1]) if m else 0.0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = float(sum(int(x) for x in m.groups())) if m else 0.0
    m = re.search(r"(\d+) requests in", out)
    result["requests"] = float(m[1]) if m else 0.0
    return result


def run_wrk(url: str, script: Path, duration: float, connections: int) -> dict[str, float]:
    seconds = max(1, round(duration))  # wrk takes whole seconds
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert popen.stdout is not None
    out = popen.stdout.read().decode()
    _, status, usage = os.wait4(popen.pid, 0)
    popen.returncode = os.waitstatus_to_exitcode(status)
    if popen.returncode != 0:
        raise RuntimeError(f"wrk failed: {out}")
    result = parse_wrk(out)
    result["cpu_wrk_s"] = usage.ru_utime + usage.ru_stime
    return result


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


# --- one host --------------------------------------------------------------------------------


@dataclass
class Rig:
    binary: Path
    tmp: Path
    redis_port: int
    upstream: Proc
    upstream_port: int
    python: Path
    opts: argparse.Namespace
    results: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def host_running(rig: Rig, host: str, hooks: list[str]) -> Iterator[tuple[Proc, Proc | None, int]]:
    port = free_port()
    plugin_host, sock = start_host(host, rig.tmp, rig.python, rig.opts.workers)
    gateway: Proc | None = None
    try:
        conf = gateway_config(rig.tmp, host, sock, rig.redis_port, port, hooks, rig.upstream_port)
        gateway = start_gateway(rig.binary, conf, rig.tmp, host, port, hooks)
        yield gateway, plugin_host, port
    finally:
        if gateway is not None:
            gateway.stop()
        if plugin_host is not None:
            plugin_host.stop()


def measure_host(rig: Rig, host: str, hooks: list[str], round_no: int) -> None:
    with host_running(rig, host, hooks) as (gateway, plugin_host, port):
        for name in hooks:
            script = wrk_script(rig.tmp, name)
            url = f"http://127.0.0.1:{port}/{name}/"
            run_wrk(url, script, rig.opts.warmup, rig.opts.connections)  # warm-up
            groups = {"gateway": gateway, "upstream": rig.upstream}
            if plugin_host is not None:
                groups["host"] = plugin_host
            before = {g: p.cpu() for g, p in groups.items()}
            r = run_wrk(url, script, rig.opts.duration, rig.opts.connections)
            after = {g: p.cpu() for g, p in groups.items()}
            requests = max(r["requests"], 1.0)
            row: dict[str, Any] = {"round": round_no, "host": host, "hook": name, **r}
            for g in groups:
                row[f"cpu_us_{g}"] = cpu_delta(before[g], after[g]) / requests * 1e6
            row["cpu_us_wrk"] = r["cpu_wrk_s"] / requests * 1e6
            rig.results.append(row)
            log(
                f"round {round_no} {host:9} {name:7} {r['rps']:9.0f} req/s"
                f"  p50 {r['p50_us']:8.0f} µs"
                f"  non-2xx {r['non2xx']:.0f}  gw {row['cpu_us_gateway']:.0f} µs"
                f"  host {row.get('cpu_us_host', 0):.0f} µs"
            )


# --- report ----------------------------------------------------------------------------------


def median_of(rows: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return statistics.median(values) if values else float("nan")


def report(rig: Rig, hosts: list[str], hooks: list[str], labels: dict[str, str]) -> str:
    lines = [
        "| hook | host | requests/s | p50 µs | p99 µs | non-2xx | CPU µs/req gateway | plugin host"
        " | upstream | wrk | vs embedded | vs grpcio | vs go-echo |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in hooks:
        rps: dict[str, float] = {}
        for host in hosts:
            rows = [r for r in rig.results if r["host"] == host and r["hook"] == name]
            if rows:
                rps[host] = median_of(rows, "rps")
        for host in hosts:
            rows = [r for r in rig.results if r["host"] == host and r["hook"] == name]
            if not rows:
                continue
            ratio = {
                other: _ratio(rig.results, name, host, other, rps)
                for other in ("embedded", "grpcio", "go-echo")
            }
            lines.append(
                f"| {name} | {host} | {rps[host]:,.0f} | {median_of(rows, 'p50_us'):,.0f}"
                f" | {median_of(rows, 'p99_us'):,.0f} | {sum(r['non2xx'] for r in rows):.0f}"
                f" | {median_of(rows, 'cpu_us_gateway'):.0f}"
                f" | {_fmt(median_of(rows, 'cpu_us_host'))}"
                f" | {median_of(rows, 'cpu_us_upstream'):.0f} | {median_of(rows, 'cpu_us_wrk'):.0f}"
                f" | {ratio['embedded']} | {ratio['grpcio']} | {ratio['go-echo']} |"
            )
    o = rig.opts
    lines += [
        "",
        f"Command: `python bench/gateway.py {' '.join(sys.argv[1:])}`; {o.rounds} interleaved"
        f" round(s) of {o.duration:g} s (after {o.warmup:g} s warm-up), wrk -t2 -c{o.connections},"
        f" median of rounds (ratios: of the medians, [the range of each round's own]);"
        f" tykworker --workers {o.workers}.",
        *[f"* {host}: {label}" for host, label in labels.items() if host in hosts],
    ]
    return "\n".join(lines)


def _ratio(
    results: list[dict[str, Any]], hook: str, host: str, other: str, rps: dict[str, float]
) -> str:
    """``host``'s median requests/s over ``other``'s, and with more than one round, the
    range of the rounds' own ratios in brackets: rounds are interleaved, so the hosts of one
    round saw the same machine, while this VM's speed drifts between rounds."""
    if other not in rps or host == other:
        return ""
    text = f"{rps[host] / rps[other]:.2f}x"
    by_round: dict[int, dict[str, float]] = {}
    for r in results:
        if r["hook"] == hook and r["host"] in (host, other):
            by_round.setdefault(r["round"], {})[r["host"]] = r["rps"]
    each = [v[host] / v[other] for v in by_round.values() if len(v) == 2 and v[other]]
    if len(each) > 1:
        text += f" [{min(each):.2f}-{max(each):.2f}]"
    return text


def _fmt(x: float) -> str:
    return "—" if x != x else f"{x:.0f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--hosts", default=",".join(HOSTS))
    ap.add_argument("--hooks", default=",".join(HOOKS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument(
        "--python",
        default="/usr/bin/python3.11",
        help="interpreter of the Python hosts (default: the embedded driver's build)",
    )
    ap.add_argument("--quick", action="store_true", help="1 round of 4 s")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    opts = ap.parse_args(argv)
    if opts.quick:
        opts.rounds, opts.duration, opts.warmup = 1, 4.0, 1.0
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    hosts = [h for h in opts.hosts.split(",") if h]
    hooks = [h for h in opts.hooks.split(",") if h]
    binary = gateway_binary()
    python = host_python(opts.python)
    labels = {
        "embedded": "Tyk's embedded driver, gateway-linked libpython3.11 (Debian)",
        "tykworker": f"{interpreter_label(python)}, {build_label(python, {})}",
        "grpcio": interpreter_label(python),
        "tykworker-nopipe": f"{interpreter_label(python)}, {build_label(python, {})}, "
        "--pipeline-depth 1",
        "tykworker-pure": f"{interpreter_label(python)}, "
        f"{build_label(python, VARIANT_ENV['tykworker-pure'])}",
        "none": "no plugin",
        "go-echo": "grpc-go echo server (bench/loadgen -serve): no hook runs, the request bytes"
        " are the answer",
    }
    with tempfile.TemporaryDirectory(prefix="tw-gwbench-") as t:
        tmp = Path(t)
        redis, redis_port = start_redis(tmp)
        upstream, upstream_port = start_upstream(tmp)
        rig = Rig(binary, tmp, redis_port, upstream, upstream_port, python, opts)
        try:
            for round_no in range(1, opts.rounds + 1):
                for host in hosts:
                    usable = [h for h in hooks if host != "none" or h not in ("cpu", "auth")]
                    if host == "go-echo":
                        usable = [h for h in usable if h in ECHO_HOOKS]
                    measure_host(rig, host, usable, round_no)
        finally:
            upstream.stop()
            redis.stop()
        text = report(rig, hosts, hooks, labels)
    print(text)
    if opts.out:
        opts.out.write_text(json.dumps(rig.results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
