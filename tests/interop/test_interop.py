"""grpc-go, the Tyk gateway's gRPC library, against both fronts: many concurrent calls on
one connection, a 20 MiB message, unknown method, DispatchEvent, a client deadline, and
connections dropped mid-call and mid-frame. The client is tests/interop/main.go."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tykworker._proto import coprocess_object_pb2 as object_pb2

from ..integration.conftest import Server, make_object, wait_for

pytestmark = pytest.mark.integration

EVENT = (
    '{"message": {"Type": "AuthFailure", "Meta": {"Key": "k"}, "TimeStamp": "t"},'
    ' "handler_name": "RecordEvent", "spec": {"APIID": "api1", "OrgID": "org1"}}'
)


def write_payloads(directory: Path) -> Path:
    directory.mkdir(exist_ok=True)
    body = bytes(range(256)) * (20 * 4096)  # 20 MiB
    payloads = {
        "echo.bin": make_object("Echo"),
        "big.bin": make_object("BigBody", body=body),
        "slow.bin": make_object("Sleep", headers={"Sleep": "0.5"}),
        "sleep.bin": make_object("Sleep", headers={"Sleep": "2"}),
    }
    for name, obj in payloads.items():
        (directory / name).write_bytes(obj.SerializeToString())
    (directory / "event.bin").write_bytes(object_pb2.Event(payload=EVENT).SerializeToString())
    return directory


def run(client: Path, server: Server, payloads: Path, scenario: str, *args: str) -> Any:
    cmd = [str(client), "-target", "unix://" + server.socket, "-dir", str(payloads)]
    proc = subprocess.run(
        [*cmd, "-scenario", scenario, *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("front", ["native", "grpcio"])
def test_grpc_go_client(front, start_server, workdir, interop_client):
    server = start_server("--workers", "2", env={"TYKWORKER_FRONT": front})
    payloads = write_payloads(workdir / "payloads")

    result = run(interop_client, server, payloads, "concurrent", "-c", "64", "-n", "40")
    assert (result["ok"], result["errors"], result["bad"]) == (64 * 40, {}, 0)

    result = run(interop_client, server, payloads, "big")
    assert result["ok"] == 1 and result["detail"]["reply"] >= 20 * 1024 * 1024, result

    result = run(interop_client, server, payloads, "unknown")
    assert result["errors"] == {"Unimplemented": 1}

    result = run(interop_client, server, payloads, "event")
    assert result["ok"] == 1, result

    result = run(interop_client, server, payloads, "drop")
    assert result["detail"]["cancelled_ok"] == 0, result
    assert (result["ok"], result["errors"], result["bad"]) == (200, {}, 0)

    result = run(interop_client, server, payloads, "deadline")
    # A 200 ms grpc-timeout on a 2 s hook: the client's own deadline and the front's timeout
    # answer (which honours grpc-timeout) race at 200 ms; either way the call ends then.
    assert result["errors"] == {"DeadlineExceeded": 1} or result["ok"] == 1, result
    assert result["detail"]["seconds"] < 1.5
    # The front honoured grpc-timeout (200 ms), not only the 5 s hook deadline: its timeout
    # answer came (by the front's own clock, logged as elapsed=) before the 2 s hook could
    # have finished.
    line = wait_for(
        lambda: next(
            (x for x in server.log().splitlines() if "answered by tykworker: timeout" in x), None
        )
    )
    elapsed = re.search(r"elapsed=([0-9.]+)", line)
    assert elapsed is not None and float(elapsed.group(1)) < 2.0, line

    assert server.proc.poll() is None
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"
    tracebacks = server.log().split("Traceback")[1:]
    if front == "grpcio":
        # grpcio itself logs a traceback when it sends an answer to a client that has
        # just dropped its connection (ExecuteBatchError inside cygrpc): its noise, not
        # ours. Nothing else may raise.
        tracebacks = [t for t in tracebacks if "ExecuteBatchError" not in t[:3000]]
    assert tracebacks == []
