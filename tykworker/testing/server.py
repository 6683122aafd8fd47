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
from collections.abc import Callable, Mapping, Sequence
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


class ServeProcess:
    """``python -m tykworker serve --socket <workdir>/tyk.sock ARGS`` as a child process in
    its own session, with ``NOTIFY_SOCKET`` bound here (``wait_notify``) and its output in
    ``<workdir>/server.log``. The base of ``TykworkerServer`` and of the project's own
    integration suite's server. ``stop()`` is idempotent."""

    def __init__(
        self,
        workdir: Path,
        args: Sequence[str],
        env: Mapping[str, str],
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.workdir = workdir
        self.socket = str(workdir / "tyk.sock")
        self.args = list(args)
        self.log_path = workdir / "server.log"
        self.notify_path = str(workdir / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.messages: list[str] = []  # datagrams received while waiting for others
        self._channel: grpc.Channel | None = None
        environ = {**env, "NOTIFY_SOCKET": self.notify_path}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "tykworker", "serve", "--socket", self.socket, *args]
        self.proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=environ,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
        )

    def wait_notify(self, prefix: str, timeout: float = 30.0) -> str:
        """The next sd_notify datagram with a line starting with ``prefix``, as text (all
        its lines); ``ServerError`` (with the log) if none comes in ``timeout`` seconds or
        the server exits. Datagrams received meanwhile are kept for later calls."""

        def matches(datagram: str) -> bool:
            return any(line.startswith(prefix) for line in datagram.splitlines())

        for datagram in self.messages:
            if matches(datagram):
                self.messages.remove(datagram)
                return datagram
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.notify.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
            try:
                datagram = self.notify.recv(4096).decode(errors="replace")
            except TimeoutError:
                if self.proc.poll() is not None:
                    break
                continue
            if matches(datagram):
                return datagram
            self.messages.append(datagram)
        log = self.log()
        raise ServerError(f"no {prefix!r} notification from tykworker serve; its log:\n{log}")

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

    def log(self) -> str:
        """The server's log so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

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
            self.notify.close()
        return self.proc.returncode


class TykworkerServer(ServeProcess):
    """One running server in a fresh temporary folder (removed by ``stop``), ready when
    constructed. ``call``/``event`` talk to it as the gateway does. ``TYKWORKER_*``
    variables of the test's environment do not reach it (``env`` sets them)."""

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
        workdir = Path(tempfile.mkdtemp(prefix="tw-", dir="/tmp"))
        folders = {"--middleware": middleware, "--event-handlers": event_handlers}
        folders["--bundles"] = bundles
        cmd = ["--workers", str(workers)]
        for flag, folder in folders.items():
            if folder is not None:
                cmd += [flag, str(Path(folder).absolute())]
            elif flag != "--bundles":
                cmd += [flag, str(workdir / "none")]  # no such folder: no handlers
        environ = {k: v for k, v in os.environ.items() if not k.startswith("TYKWORKER_")}
        environ.update(env or {})
        super().__init__(workdir, [*cmd, *args], environ)
        try:
            self.wait_notify("READY=1", start_timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> int | None:
        """Stop the server (idempotent) and remove its folder; its exit status."""
        code = super().stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return code

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

    def __enter__(self) -> TykworkerServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
