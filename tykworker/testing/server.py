"""``TykworkerServer``: a real ``tykworker serve`` on a temporary socket, for tests that need
real processes (deadlines, crashes, the store shared by several workers).

The server is a child process (``python -m tykworker serve``) in its own session, with its
socket, runtime folder and log in a fresh temporary folder. Readiness is the server's own
``READY=1`` sd_notify datagram, received on a socket of this object: no sleeps, no polling
of the socket path. ``stop()`` sends SIGTERM to the process group, waits, then SIGKILLs
whatever is left. Runs in the test process only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from tykworker._proto import coprocess_object_pb2 as object_pb2

StrPath = str | PathLike[str]
DISPATCH = "/coprocess.Dispatcher/Dispatch"
DISPATCH_EVENT = "/coprocess.Dispatcher/DispatchEvent"


class ServerError(RuntimeError):
    """The server did not start (its log is in the message) or a call failed."""


class TykworkerServer:
    """One running server. ``call``/``event`` talk to it as the gateway does."""

    def __init__(
        self,
        middleware: StrPath | None = None,
        event_handlers: StrPath | None = None,
        bundles: StrPath | None = None,
        *,
        workers: int = 2,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        # Short folder under /tmp: AF_UNIX paths are limited to 108 bytes.
        self.workdir = Path(tempfile.mkdtemp(prefix="tw-", dir="/tmp"))
        self.socket = str(self.workdir / "tyk.sock")
        self.log_path = self.workdir / "server.log"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(self.workdir / "notify.sock"))
        folders = {"--middleware": middleware, "--event-handlers": event_handlers}
        folders["--bundles"] = bundles
        cmd = [sys.executable, "-m", "tykworker", "serve", "--socket", self.socket]
        cmd += ["--workers", str(workers)]
        for flag, folder in folders.items():
            if folder is not None:
                cmd += [flag, str(Path(folder).absolute())]
            elif flag != "--bundles":
                cmd += [flag, str(self.workdir / "none")]  # no such folder: no handlers
        cmd += list(args)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("TYKWORKER_")}
        environ.update(env or {})
        environ["NOTIFY_SOCKET"] = str(self.workdir / "notify.sock")
        self._channel: grpc.Channel | None = None
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            env=environ,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._notify.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
            try:
                datagram = self._notify.recv(4096).decode(errors="replace")
            except TimeoutError:
                if self.proc.poll() is not None:
                    break
                continue
            if "READY=1" in datagram.splitlines():
                return
        raise ServerError(f"tykworker serve did not become ready; its log:\n{self.log()}")

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            limit = 64 * 1024 * 1024
            options = [
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ]
            self._channel = grpc.insecure_channel("unix://" + self.socket, options=options)
        return self._channel

    def call(
        self, hook_name: str, obj: object_pb2.Object, timeout: float = 30.0
    ) -> object_pb2.Object:
        """``Dispatch`` (a copy of) ``obj`` to hook ``hook_name``; the reply Object.
        Raises ``grpc.RpcError`` when the server answers with a gRPC error."""
        sent = object_pb2.Object()
        sent.CopyFrom(obj)
        sent.hook_name = hook_name
        method = self.channel.unary_unary(DISPATCH)  # type: ignore[call-arg]
        reply = method(sent.SerializeToString(), timeout=timeout)
        return object_pb2.Object.FromString(bytes(reply))

    def event(self, handler_name: str, event: Mapping[str, Any], timeout: float = 30.0) -> None:
        """``DispatchEvent`` (``event``: the message, or a payload with ``"message"``)."""
        payload: dict[str, Any] = dict(event) if "message" in event else {"message": dict(event)}
        payload["handler_name"] = handler_name
        payload.setdefault("spec", {"APIID": "api-1", "OrgID": "org-1"})
        message = object_pb2.Event(payload=json.dumps(payload))
        method = self.channel.unary_unary(DISPATCH_EVENT)  # type: ignore[call-arg]
        method(message.SerializeToString(), timeout=timeout)

    def log(self) -> str:
        """The server's log so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        """Stop the server (idempotent); its exit status."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=40)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        if not self._log.closed:
            self._log.close()
            self._notify.close()
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> TykworkerServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
