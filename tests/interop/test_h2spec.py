"""HTTP/2 conformance of the native front: h2spec (``go install``-ed through the Go module
proxy) against a real server on TCP, strict mode, every case must pass. The same ground is
covered without Go by tests/unit/test_h2violations.py."""

from __future__ import annotations

import socket
import subprocess
import xml.etree.ElementTree as ET

import pytest

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_h2spec_strict_passes_against_the_native_front(start_server, workdir, h2spec):
    port = free_port()
    server = start_server(
        "--workers", "1", "--socket", f"tcp://127.0.0.1:{port}",
        "--runtime-dir", str(workdir / "rt"), env={"TYKWORKER_FRONT": "native"},
    )  # fmt: skip
    report = workdir / "h2spec.xml"
    proc = subprocess.run(
        [str(h2spec), "-h", "127.0.0.1", "-p", str(port), "--strict", "-o", "5",
         "-j", str(report)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    cases = ET.parse(report).getroot().iter("testcase")
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == [] and proc.returncode == 0, proc.stdout[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert "0 failed" in summary and "146 passed" in summary, summary
    assert server.proc.poll() is None
