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
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.cli import objects
from tykworker.config import Settings
from tykworker.testing.server import ServeProcess

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


class Server(ServeProcess):
    """One running ``tykworker serve`` process tree (the test kit's ``ServeProcess``, with
    the test's environment passed through and the process-tree helpers the suite needs)."""

    def __init__(
        self,
        workdir: Path,
        args: list[str],
        env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
    ):
        environ = {**os.environ, **(env or {})}
        environ.pop("TYKWORKER_CONFIG", None)
        if FRONT:  # run the whole suite against one front: TYKWORKER_TEST_FRONT=native|grpcio
            environ.setdefault("TYKWORKER_FRONT", FRONT)
        super().__init__(workdir, args, environ, preexec)

    def wait_ready(self) -> Server:
        self.wait_notify("READY=1")
        return self

    # --- calls ----------------------------------------------------------------------
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
