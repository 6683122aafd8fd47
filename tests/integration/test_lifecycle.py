"""Reload, drain, recycling, resizing and the process invariants of the real server."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import psutil
import pytest

from tykworker._proto import coprocess_object_pb2 as object_pb2

from .conftest import FRONT, Server, busy_with, session_processes, wait_for

pytestmark = pytest.mark.integration


def _set_version(workdir: Path, version: str) -> None:
    path = workdir / "middleware" / "hooks.py"
    text = path.read_text()
    start = text.index('"X-Version", "') + len('"X-Version", "')
    end = text.index('"', start)
    path.write_text(text[:start] + version + text[end:])


class Load:
    """Steady load from a few client threads; counts answers by status."""

    def __init__(self, server: Server, threads: int = 3) -> None:
        self.server = server
        self.stop = threading.Event()
        self.codes: list[int] = []
        self.versions: list[str] = []
        self.errors: list[Exception] = []
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                reply = self.server.dispatch("Echo")
            except Exception as exc:  # a failed call is what these tests look for
                self.errors.append(exc)
                continue
            self.codes.append(reply.request.return_overrides.response_code)
            self.versions.append(reply.request.set_headers["X-Version"])

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_sighup_reload_under_load_fails_no_call(start_server, workdir):
    server = start_server("--workers", "2")
    old = server.worker_pids()
    load = Load(server)
    wait_for(lambda: len(load.codes) > 50, what="load running")
    _set_version(workdir, "2")
    server.signal(signal.SIGHUP)
    server.wait_notify("RELOADING=1")
    server.wait_notify("READY=1")
    wait_for(lambda: not (server.worker_pids() & old), what="old generation gone")
    count = len(load.codes)
    wait_for(lambda: len(load.codes) > count + 50, what="load after reload")
    load.finish()
    assert load.errors == []
    assert set(load.codes) == {-1}
    assert load.versions[-1] == "2" and load.versions[0] == "1"
    assert server.worker_pids(generation=2)
    assert "exited with code" not in server.log()  # retired workers exit 0


def test_reload_retires_a_worker_whose_plugin_ignores_sigterm(start_server, workdir):
    """Retirement does not depend on the plugin's signal handlers: the front drains the
    old generation once the new one is ready, and the old worker exits at EOF (code 0)
    long before ``graceful_timeout``, with no call failed."""
    server = start_server("--workers", "1", "--graceful-timeout", "300")
    (old,) = server.worker_pids()
    trapped = server.dispatch("TrapTerm").request.set_headers["X-Worker-Pid"]
    assert trapped == str(old)
    load = Load(server)
    wait_for(lambda: len(load.codes) > 20, what="load running")
    _set_version(workdir, "2")
    server.signal(signal.SIGHUP)
    server.wait_notify("RELOADING=1")
    server.wait_notify("READY=1")
    wait_for(lambda: old not in server.worker_pids(), what="old worker gone")
    count = len(load.codes)
    wait_for(lambda: len(load.codes) > count + 20, what="load after reload")
    load.finish()
    assert load.errors == []
    assert set(load.codes) == {-1}
    assert load.versions[-1] == "2"
    assert f"worker pid {old} killed" not in server.log()
    assert "exited with code" not in server.log()  # drained by the front first: still 0


def test_dead_supervisor_takes_a_worker_stuck_in_c_down(start_server):
    """SIGKILL of the supervisor while a hook spins in C holding the GIL (a SIGTERM
    handler never runs there): the call gets its timeout answer and the front, finding
    itself orphaned, kills that worker after its drain; nothing of the server is left."""
    server = start_server("--workers", "1", "--hook-timeout", "1", "--graceful-timeout", "30")
    (worker,) = server.worker_pids()
    result = {}

    def call() -> None:
        result["reply"] = server.dispatch("Chaos", headers={"Do": "spin", "Call-Id": "1"})

    thread = threading.Thread(target=call)
    thread.start()
    wait_for(lambda: busy_with(server, "Chaos"), what="worker spinning")
    os.kill(server.proc.pid, signal.SIGKILL)
    thread.join(30)
    assert result["reply"].request.return_overrides.response_code == 504
    wait_for(lambda: not session_processes(server.proc.pid), what="every process gone")
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == "zombie"


def test_worker_stuck_in_c_dies_when_supervisor_and_front_are_both_killed(start_server):
    """SIGKILL of the supervisor *and* the front while a hook is stuck in C code that
    releases the GIL (``libc.sleep``, SIGTERM blocked): nothing is left to kill that
    worker but itself. Its watchdog thread (worker/watchdog.py) sees the supervisor gone
    and kills its process group ``graceful_timeout`` later."""
    server = start_server(
        "--workers", "1", "--hook-timeout", "600", "--graceful-timeout", "1"
    )  # fmt: skip
    (worker,) = server.worker_pids()
    front = server.front_pid()

    def call() -> None:
        with contextlib.suppress(grpc.RpcError):  # the front dies under it
            server.dispatch("Chaos", headers={"Do": "csleep", "Call-Id": "1"})

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    wait_for(lambda: busy_with(server, "Chaos"), what="worker stuck in C")
    os.kill(server.proc.pid, signal.SIGSTOP)  # so that no new front is started
    os.kill(front, signal.SIGKILL)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    wait_for(lambda: not session_processes(server.proc.pid), timeout=30, what="worker gone")
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == "zombie"
    assert "this worker still busy: killing it" in server.log()


def test_new_server_starts_on_the_socket_while_the_orphaned_front_drains(
    start_server, workdir, gate
):
    """After a supervisor SIGKILL the old front finishes its call; meanwhile a new server
    binds the same socket and bridge paths (the old front closed them at once), and the
    old front, when it leaves, removes nothing of the new server's."""
    old = start_server("--workers", "1", "--graceful-timeout", "60", "--hook-timeout", "60")
    result = {}

    def call() -> None:
        result["reply"] = old.dispatch("Gate", headers={"Gate": str(gate)})

    thread = threading.Thread(target=call)
    thread.start()
    wait_for(lambda: busy_with(old, "Gate"), what="call in flight")
    front = old.front_pid()
    os.kill(old.proc.pid, signal.SIGKILL)
    old.proc.wait(10)
    # The new server: its own notify socket and log next to the old ones.
    old.notify.close()
    os.unlink(old.notify_path)
    old.log_path = old.log_path.rename(workdir / "old-server.log")
    new = start_server("--workers", "1")
    assert new.dispatch("Echo").request.set_headers["X-Version"] == "1"
    assert psutil.pid_exists(front)  # the old front is still draining its call
    gate.touch()
    thread.join(30)
    assert result["reply"].request.return_overrides.response_code == -1  # answered by the hook
    wait_for(lambda: not session_processes(old.proc.pid), what="old server gone")
    assert Path(new.socket).is_socket()
    assert new.dispatch("Echo").request.set_headers["X-Version"] == "1"


def test_reload_with_broken_plugin_keeps_old_generation(start_server, workdir):
    server = start_server("--workers", "2")
    old = server.worker_pids()
    (workdir / "middleware" / "broken.py").write_text("import does_not_exist_anywhere\n")
    server.signal(signal.SIGHUP)
    server.wait_notify("RELOADING=1")
    ready = server.wait_notify("READY=1")
    assert "reload failed" in server.log() or "failed" in ready
    # The failed worker's traceback reaches the log on its own pipe, perhaps after READY.
    wait_for(lambda: "does_not_exist_anywhere" in server.log(), what="the import error logged")
    wait_for(lambda: server.worker_pids() == old, what="failed generation gone")
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"
    assert server.worker_pids() == old


def test_sigterm_drains_in_flight_calls_and_removes_socket(start_server, gate):
    server = start_server("--workers", "1")
    result: dict[str, object_pb2.Object] = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("r", server.dispatch("Gate", headers={"Gate": str(gate)}))
    )
    thread.start()
    (pid,) = server.worker_pids()
    wait_for(lambda: busy_with(server, "Gate") == {pid}, what="busy")
    server.signal(signal.SIGTERM)
    wait_for(lambda: "draining" in server.log(), what="front draining")
    assert server.proc.poll() is None and "r" not in result  # the call holds the stop
    gate.touch()
    assert server.proc.wait(30) == 0
    thread.join(10)
    assert result["r"].request.set_headers["X-Worker-Pid"] == str(pid)
    assert not os.path.exists(server.socket)
    assert session_processes(server.proc.pid) == []


def test_plugin_import_error_at_start_exits_3(start_server, workdir):
    (workdir / "middleware").mkdir()
    (workdir / "middleware" / "bad.py").write_text("raise ImportError('broken on purpose')\n")
    server = start_server("--workers", "2", ready=False)
    assert server.proc.wait(30) == 3
    assert "broken on purpose" in server.log()


def test_max_requests_recycles_without_failing_calls(start_server):
    server = start_server("--workers", "1", "--max-requests", "5")
    pids = set()
    for _ in range(20):
        reply = server.dispatch("Echo")
        assert reply.request.return_overrides.response_code == -1
        pids.add(int(reply.request.set_headers["X-Worker-Pid"]))
    assert len(pids) >= 4


def test_max_rss_recycles_leaking_worker(start_server):
    server = start_server("--workers", "1", "--max-rss-mb", "80")
    pids = []
    for _ in range(12):
        reply = server.dispatch("Leak")
        assert reply.request.return_overrides.response_code == -1
        pids.append(int(reply.request.set_headers["X-Worker-Pid"]))
    assert len(set(pids)) >= 2
    assert "RSS" in server.log()


def test_ttin_ttou_resize_the_pool(start_server):
    server = start_server("--workers", "1")
    server.signal(signal.SIGTTIN)
    wait_for(lambda: len(server.worker_pids()) == 2, what="2 workers")
    server.signal(signal.SIGTTOU)
    wait_for(lambda: len(server.worker_pids()) == 1, what="1 worker")


def test_supervisor_never_imports_grpc_and_titles_name_roles(start_server):
    server = start_server("--workers", "2")
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "cygrpc" not in maps
    # Only the grpcio front loads grpc; the native front (the default) does not need it.
    front_maps = Path(f"/proc/{server.front_pid()}/maps").read_text()
    assert ("cygrpc" in front_maps) == (FRONT == "grpcio")
    for pid in server.worker_pids():
        assert "cygrpc" not in Path(f"/proc/{pid}/maps").read_text()
    titles = sorted(Path(f"/proc/{p}/cmdline").read_text() for p in server.worker_pids())
    assert all(t.startswith("tykworker: worker ") and "gen 1" in t for t in titles)
    assert Path(f"/proc/{server.proc.pid}/cmdline").read_text().startswith("tykworker: supervisor")


def test_orphans_of_plugins_are_reaped(start_server):
    server = start_server("--workers", "1", "--max-requests", "2")
    orphan = int(server.dispatch("Orphan").request.set_headers["X-Orphan-Pid"])
    # Precondition: the plugin's child exists while its worker lives (2 calls to go).
    assert orphan in {p.pid for p in session_processes(server.proc.pid)}
    assert psutil.Process(orphan).name() == "sleep"
    server.dispatch("Echo")  # the worker's last call: it exits, leaving the child behind
    wait_for(lambda: not psutil.pid_exists(orphan), what="orphan killed and reaped")


def test_status_command_lists_workers(start_server):
    server = start_server("--workers", "2")
    out = subprocess.run(
        [sys.executable, "-m", "tykworker", "status", "--socket", server.socket],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    for pid in server.worker_pids():
        assert str(pid) in out


def test_socket_mode_is_0660(start_server):
    server = start_server("--workers", "1")
    assert os.stat(server.socket).st_mode & 0o777 == 0o660


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tykworker", *args], capture_output=True, text=True, timeout=60
    )


def test_reload_command_reports_success_and_failure(start_server, workdir):
    server = start_server("--workers", "1")
    _set_version(workdir, "3")
    done = _cli("reload", "--socket", server.socket)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "generation 2 is serving" in done.stdout
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "3"
    (workdir / "middleware" / "broken.py").write_text("syntax error here\n")
    failed = _cli("reload", "--socket", server.socket)
    assert failed.returncode == 1
    assert "reload failed" in failed.stdout
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "3"


def test_sigint_stops_fast(start_server, gate):
    # Neither the hook's deadline nor a graceful stop would end the held call before the
    # bounds below: only a fast stop does.
    server = start_server("--workers", "1", "--hook-timeout", "600", "--graceful-timeout", "600")
    outcome: list[object] = []

    def call() -> None:  # held on a gate never opened: only a fast stop ends it
        try:
            outcome.append(server.dispatch("Gate", headers={"Gate": str(gate)}))
        except grpc.RpcError as exc:
            outcome.append(exc.code())

    thread = threading.Thread(target=call)
    thread.start()
    (pid,) = server.worker_pids()
    wait_for(lambda: busy_with(server, "Gate") == {pid}, what="busy")
    server.signal(signal.SIGINT)
    assert server.proc.wait(20) is not None
    thread.join(20)
    assert outcome and outcome[0] != grpc.StatusCode.DEADLINE_EXCEEDED
    assert session_processes(server.proc.pid) == []


def test_stale_socket_is_replaced_and_regular_file_refused(start_server, workdir):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(workdir / "tyk.sock"))
    stale.close()  # a socket file nobody listens on
    server = start_server("--workers", "1")
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"
    second = _cli("serve", "--socket", server.socket, "--middleware", str(workdir / "middleware"))
    assert second.returncode == 2 and "already listening" in second.stderr
    server.stop()
    (workdir / "tyk.sock").write_text("not a socket")
    refused = _cli("serve", "--socket", server.socket, "--middleware", str(workdir / "middleware"))
    assert refused.returncode == 2 and "not a socket" in refused.stderr
    assert (workdir / "tyk.sock").read_text() == "not a socket"


def test_only_workers_import_plugin_code(start_server, workdir):
    """Neither the supervisor nor the front ever imports a plugin module, also across a
    reload; every worker does."""
    marker = workdir / "imports.log"
    server = start_server("--workers", "2", env={"TW_IMPORT_LOG": str(marker)})
    server.signal(signal.SIGHUP)
    server.wait_notify("RELOADING=1")
    server.wait_notify("READY=1")
    importers = {int(line) for line in marker.read_text().split()}
    workers_now = server.worker_pids(generation=2)
    assert workers_now <= importers
    assert server.proc.pid not in importers
    assert server.front_pid() not in importers
    assert len(importers) == 4  # two generations of two workers, nothing else


def test_sighup_applies_new_deadlines_and_fail_open_to_the_front(start_server, workdir, gate):
    config = workdir / "tykworker.toml"
    config.write_text("hook_timeout = 30\n")
    server = start_server("--workers", "1", "--config", str(config))
    config.write_text('hook_timeout = 0.5\nfail_open = ["post"]\nmax_message_mb = 8\n')
    server.signal(signal.SIGHUP)
    server.wait_notify("RELOADING=1")
    server.wait_notify("READY=1")
    wait_for(lambda: "applied new live settings" in server.log(), what="front applied")
    assert "max_message_mb changed; a restart applies them" in server.log()
    never = {"Gate": str(gate)}  # the gate is never opened: each call outlives its deadline
    timed_out = server.dispatch("Gate", headers=never)
    assert timed_out.request.return_overrides.response_code == 504
    wait_for(lambda: len(server.worker_pids()) == 1, what="stuck worker replaced")
    opened = server.dispatch("Gate", hook_type="post", headers=never)
    assert opened.request.return_overrides.response_code == -1  # fail open: echoed


def test_sighup_with_invalid_config_keeps_everything(start_server, workdir, gate):
    config = workdir / "tykworker.toml"
    config.write_text("hook_timeout = 0.5\n")
    server = start_server("--workers", "1", "--config", str(config))
    config.write_text("hook_timeout = -3\n")
    server.signal(signal.SIGHUP)
    server.wait_notify("READY=1")
    assert "invalid configuration, keeping the current one" in server.log()
    reply = server.dispatch("Gate", headers={"Gate": str(gate)})  # never opened
    assert reply.request.return_overrides.response_code == 504  # still the 0.5 s deadline


def test_hook_in_event_handlers_is_refused_at_start(start_server, workdir):
    # A @Hook there can never be called (Dispatch looks in middleware and bundles): refused
    # with its place, never counted as "1 hooks" and answered no_hook later.
    (workdir / "event_handlers").mkdir()
    (workdir / "event_handlers" / "misplaced.py").write_text(
        "from tyk.decorators import *\n\n\n@Hook\ndef Misplaced(request, session, spec):\n"
        "    return request, session\n"
    )
    server = start_server("--workers", "1", ready=False)
    assert server.proc.wait(30) == 3
    log = server.log()
    assert "misplaced.py:4: @Hook Misplaced in event_handlers directory" in log
    assert "holds @Event handlers only" in log
    assert not re.search(r"loaded event_handlers directory \S+: [1-9]\d* hooks", log)


def test_misspelt_tykworker_variable_is_named_by_serve_and_the_cli(start_server):
    typo = {"TYKWORKER_WOKERS": "3"}
    server = start_server("--workers", "1", env=typo)
    hint = (
        "environment TYKWORKER_WOKERS is not a tykworker setting and is ignored; "
        "did you mean TYKWORKER_WORKERS?"
    )
    assert hint in server.log()
    done = subprocess.run(
        [sys.executable, "-m", "tykworker", "status", "--socket", server.socket],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **typo},
    )
    assert done.returncode == 0, done.stderr
    assert f"tykworker: warning: {hint}" in done.stderr


def test_reload_with_an_invalid_configuration_exits_2_and_signals_nothing(start_server):
    # docs/cli.md: unlike a raw SIGHUP, `reload` validates first.
    server = start_server("--workers", "1")
    done = subprocess.run(
        [sys.executable, "-m", "tykworker", "reload", "--socket", server.socket],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TYKWORKER_WORKERS": "0"},
    )
    assert done.returncode == 2
    assert "environment TYKWORKER_WORKERS: invalid value for 'workers'" in done.stderr
    # A valid reload afterwards is the only one the server ever saw.
    assert _cli("reload", "--socket", server.socket).returncode == 0
    assert server.log().count("SIGHUP: reloading") == 1
