"""The benchmarks' own servers answer what their load generator expects: a bench tool
that fails every call measures nothing (bench/native_echo.py did, for a while, after the
front's call handler grew an argument)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tests.integration.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_native_echo_answers_a_grpc_call_with_the_request_and_its_marker(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "echo.sock"
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "native_echo.py"), str(sock)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(sock.exists, what="the echo server's socket")
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            call = channel.unary_unary("/coprocess.Dispatcher/Dispatch", None, None)
            reply = call(b"\x12\x03abc", timeout=10)
        assert reply == b"\x12\x03abc" + b"\x0a\x07X-Bench"
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=10)
    assert server.returncode == 0, out.decode(errors="replace")[-2000:]
    assert b"Traceback" not in out, out.decode(errors="replace")[-2000:]


@pytest.mark.parametrize(("flags", "how"), [([], "journal"), (["--no-journal"], "no journal")])
def test_worker_call_measures_the_worker_loop_in_process(flags: list[str], how: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "worker_call.py"), "--blocks", "1",
         "--calls", "16", "--batch", "4", *flags],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith(f"worker _run_batch, 4 calls per read ({how}): ") for line in lines)
    assert any(line.startswith("Runtime.start_dispatch alone: ") for line in lines)
    assert "Traceback" not in done.stderr


def test_cpu_ab_reports_cpu_per_call_of_both_trees() -> None:
    """bench/cpu_ab.py (the A/B of two source trees) runs its real servers and load
    generator end to end and prints, per tree, CPU µs per call by process group and
    calls/s: here the same tree twice, one round of 2,000 calls (enough clock ticks of
    CPU in each group to read)."""
    if shutil.which("go") is None and not (ROOT / "bench" / "bin" / "loadgen").exists():
        pytest.skip("the Go toolchain (go) is needed to build bench/loadgen")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cpu_ab.py"), str(ROOT), str(ROOT),
         "--rounds", "1", "--calls", "2000", "--workers", "1", "-c", "4"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    medians = done.stdout.split("medians:", 1)[1].splitlines()
    row = re.compile(
        r"^(A|B) CPU µs/call: front ([\d.]+) workers ([\d.]+) supervisor ([\d.]+); "
        r"([\d,]+) calls/s  \[(.+)\]$"
    )
    rows = [m for line in medians if (m := row.match(line))]
    assert [m[1] for m in rows] == ["A", "B"], done.stdout[-2000:]
    for m in rows:
        assert float(m[2]) > 0 and float(m[3]) > 0, m[0]  # both groups did the work
        assert int(m[5].replace(",", "")) > 0, m[0]
        assert Path(m[6]).resolve() == ROOT


def test_fairness_turns_slow_runs_both_variants_without_a_failed_call() -> None:
    """bench/fairness.py --turns-slow (the fast hook that turns slow, ``Fickle``) runs
    both variants end to end: a row each with calls served and none failed (a reply
    without the hook's header counts as failed, so the hook did run), and the ratio."""
    if shutil.which("go") is None and not (ROOT / "bench" / "bin" / "loadgen").exists():
        pytest.skip("the Go toolchain (go) is needed to build bench/loadgen")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fairness.py"), "--turns-slow", "-c", "4",
         "--rounds", "1", "--duration", "1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    row = re.compile(r"^\| (pipelined|no pipelining) \| ([\d,]+) \|.* \| (\d+) \|$")
    rows = [m for line in done.stdout.splitlines() if (m := row.match(line))]
    assert [m[1] for m in rows] == ["pipelined", "no pipelining"], done.stdout[-2000:]
    for m in rows:
        assert int(m[2].replace(",", "")) > 0 and m[3] == "0", m[0]
    assert re.search(r"^Fickle p99, pipelined / not: [\d.]+x", done.stdout, re.M)
