"""Fixtures that run the real ``tykworker serve`` and talk to it like a Tyk gateway.

* Each server gets a short temporary directory (AF_UNIX paths are limited to 108 bytes).
* Readiness is read from a real sd_notify datagram socket (NOTIFY_SOCKET): no sleeps, no
  polling of the socket path.
* ``TYKWORKER_TEST_FRONT=native|grpcio`` runs every server with that front (default: the
  default front).
* Teardown sends SIGTERM to the process group, waits, then SIGKILLs whatever is left, and
  fails the test if a tykworker process survives.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.cli import objects
from tykworker.config import Settings

HERE = Path(__file__).parent
PLUGINS = HERE / "plugins"
EVENTS = HERE / "events"
ROOT = HERE.parent.parent
HOOK_TYPES = {"pre": 1, "post": 2, "post_key_auth": 3, "auth": 4, "response": 5}

#: The front under test (``--front``); empty = tykworker's default front.
FRONT = os.environ.get("TYKWORKER_TEST_FRONT", "")

pytestmark = pytest.mark.integration


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns a truthy value (condition wait, bounded)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def make_object(
    hook: str,
    hook_type: str = "pre",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    method: str = "GET",
    spec: dict[str, str] | None = None,
    session: bool = False,
) -> object_pb2.Object:
    """An Object as the gateway builds it: the project's one builder
    (``tykworker.cli.objects``, which ``tykworker call`` uses too)."""
    authenticated = session or hook_type in ("post_key_auth", "post")
    return objects.gateway_object(
        HOOK_TYPES[hook_type],
        hook,
        headers=headers,
        url="/api/things?x=1",
        method=method,
        body=body,
        api_id="api1",
        spec=spec,
        session=objects.authenticated_session() if authenticated else None,
    )


class Server:
    """One running ``tykworker serve`` process tree."""

    def __init__(
        self,
        workdir: Path,
        args: list[str],
        env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
    ):
        self.workdir = workdir
        self.socket = str(workdir / "tyk.sock")
        self.args = args
        self.log_path = workdir / "server.log"
        self.notify_path = str(workdir / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(30)
        self.messages: list[str] = []
        env = {**os.environ, **(env or {}), "NOTIFY_SOCKET": self.notify_path}
        env.pop("TYKWORKER_CONFIG", None)
        if FRONT:  # run the whole suite against one front: TYKWORKER_TEST_FRONT=native|grpcio
            env.setdefault("TYKWORKER_FRONT", FRONT)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "tykworker", "serve", "--socket", self.socket, *args]
        self.proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
        )
        self._channel: grpc.Channel | None = None

    # --- notify ---------------------------------------------------------------------
    def wait_notify(self, prefix: str, timeout: float = 30.0) -> str:
        """The next sd_notify datagram with a line starting with ``prefix``, as text
        (all its lines). Datagrams received meanwhile are kept for later calls."""

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
                datagram = self.notify.recv(4096).decode()
            except TimeoutError:
                if self.proc.poll() is not None:
                    break
                continue
            if matches(datagram):
                return datagram
            self.messages.append(datagram)
        raise AssertionError(f"no {prefix!r} notification; log:\n{self.log()}")

    def wait_ready(self) -> Server:
        self.wait_notify("READY=1")
        return self

    # --- calls ----------------------------------------------------------------------
    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            limit = 64 * 1024 * 1024
            self._channel = grpc.insecure_channel(
                "unix://" + self.socket,
                options=[
                    ("grpc.max_receive_message_length", limit),
                    ("grpc.max_send_message_length", limit),
                ],
            )
        return self._channel

    def dispatch_raw(self, payload: bytes, timeout: float = 30.0) -> bytes:
        method = self.channel.unary_unary("/coprocess.Dispatcher/Dispatch", None, None)
        return method(payload, timeout=timeout)  # type: ignore[no-any-return]

    def dispatch(self, hook: str, hook_type: str = "pre", **kw: Any) -> object_pb2.Object:
        payload = make_object(hook, hook_type, **kw).SerializeToString()
        return object_pb2.Object.FromString(self.dispatch_raw(payload))

    def event(self, payload: str) -> bytes:
        method = self.channel.unary_unary("/coprocess.Dispatcher/DispatchEvent", None, None)
        return method(object_pb2.Event(payload=payload).SerializeToString(), timeout=30)  # type: ignore[no-any-return]

    # --- processes ------------------------------------------------------------------
    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []

    def worker_pids(self, generation: int | None = None) -> set[int]:
        out = set()
        for child in self.children():
            with contextlib.suppress(psutil.NoSuchProcess):
                title = " ".join(child.cmdline())
                if title.startswith("tykworker: worker ") and (
                    generation is None or f"gen {generation} " in title
                ):
                    out.add(child.pid)
        return out

    def front_pid(self) -> int:
        for child in self.children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if " ".join(child.cmdline()).startswith("tykworker: front"):
                    return child.pid
        raise AssertionError("no front process")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def stop(self) -> int | None:
        if self._channel is not None:
            self._channel.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=40)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()
        self.notify.close()
        return self.proc.returncode


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tw-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def gate(workdir: Path) -> Path:
    """A gate for the ``Gate`` hook (plugins/hooks.py): calls with ``headers={"Gate":
    str(gate)}`` hold their workers until the test creates the file (``gate.touch()``).
    Replaces sleeping hooks as race windows: the test decides when the call ends."""
    return workdir / "gate"


def busy_with(server: Server, hook: str) -> set[int]:
    """Pids of the workers whose process title says they are running ``hook``."""
    busy = set()
    for pid in server.worker_pids():
        try:
            if f"running {hook}" in Path(f"/proc/{pid}/cmdline").read_text():
                busy.add(pid)
        except OSError:
            continue
    return busy


@pytest.fixture
def start_server(workdir: Path) -> Iterator[Callable[..., Server]]:
    """Factory: ``start_server(*args, plugins=dir, ready=True)`` -> running Server
    (``preexec``: run in the child before exec, e.g. to lower its resource limits)."""
    servers: list[Server] = []

    def start(
        *args: str,
        plugins: Path | None = None,
        events: Path | None = None,
        ready: bool = True,
        env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> Server:
        plugin_dir = workdir / "middleware"
        if not plugin_dir.exists():
            shutil.copytree(plugins or PLUGINS, plugin_dir)
        event_dir = workdir / "event_handlers"
        if not event_dir.exists():
            shutil.copytree(events or EVENTS, event_dir)
        base = ["--middleware", str(plugin_dir), "--event-handlers", str(event_dir)]
        server = Server(workdir, [*base, *args], env, preexec)
        servers.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in servers:
        server.stop()
        leftovers = session_processes(server.proc.pid)
        assert not leftovers, f"processes left behind: {leftovers}"
        # A tcp:// server's default runtime directory is in $TMPDIR, not in workdir: a
        # clean stop removes it, a killed server would leave it behind.
        if "--socket" in server.args and "--runtime-dir" not in server.args:
            address = server.args[server.args.index("--socket") + 1]
            if address.startswith("tcp://"):
                shutil.rmtree(Settings(socket=address).resolved_runtime_dir(), True)


def session_processes(sid: int) -> list[psutil.Process]:
    """Live processes of the server's session (it runs with start_new_session)."""
    out = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
    return out
