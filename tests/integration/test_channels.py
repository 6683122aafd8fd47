"""Plugin code against the supervisor's channels (issue 13, "Plugin code reaches the
supervisor"), on the real server: a hostile plugin writes the issue's frames and garbage
to every descriptor it holds. The supervisor keeps running, no sibling is killed, calls
keep being served, and a worker holds no descriptor of the supervisor's."""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from tests.integration.conftest import ROOT, Server, wait_for

HOSTILE = ROOT / "tests" / "fixtures" / "plugins" / "hostile"


def _pid_of(server: Server, hook: str) -> int:
    reply = server.dispatch(hook)
    return int(reply.request.set_headers["X-Worker-Pid"])


def _serving(server: Server) -> set[int]:
    """Workers whose process title says they finished starting (``idle``/``running``)."""
    out = set()
    for pid in server.worker_pids():
        with contextlib.suppress(OSError):
            if "starting" not in Path(f"/proc/{pid}/cmdline").read_text():
                out.add(pid)
    return out


def _assert_healthy(server: Server, workers: set[int], spared: set[int]) -> None:
    """The supervisor is alive and still reaps/refills (a signal round trip), ``spared``
    workers were not killed, calls are served by a full pool."""
    assert server.proc.poll() is None, server.log()
    server.signal(signal.SIGTTIN)  # the supervisor must still read its wake-up socket
    # ... and the new worker is serving (not still importing the hostile plugin, whose
    # import-time attack a retirement would race with), before the pool shrinks again.
    wait_for(lambda: len(_serving(server)) == len(workers) + 1, what="a worker more")
    server.signal(signal.SIGTTOU)
    try:
        wait_for(lambda: len(server.worker_pids()) == len(workers), what="a worker less")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; server log:\n{server.log()}") from None
    assert spared <= server.worker_pids(), server.log()
    assert _pid_of(server, "Echo") in server.worker_pids()
    assert "Traceback" not in server.log(), server.log()


def test_frames_from_the_issue_cannot_end_the_supervisor_or_kill_a_sibling(start_server, workdir):
    mark = workdir / "mark"
    server = start_server(
        "--workers", "2", plugins=HOSTILE,
        env={"TW_HOSTILE_IMPORT": "1", "TW_HOSTILE_MARK": str(mark)},
    )  # fmt: skip
    workers = wait_for(lambda: len(server.worker_pids()) == 2 and server.worker_pids())
    attacker = _pid_of(server, "Frames")  # at call time too, when every sibling exists
    assert attacker in workers
    _assert_healthy(server, workers, workers)
    assert "stuck" not in server.log().lower() or "killing it" not in server.log()


def test_garbage_on_every_descriptor_leaves_the_server_serving(start_server, workdir):
    mark = workdir / "mark"
    server = start_server("--workers", "2", plugins=HOSTILE, env={"TW_HOSTILE_MARK": str(mark)})
    workers = wait_for(lambda: len(server.worker_pids()) == 2 and server.worker_pids())
    server.dispatch("Garbage")  # its own bridge is garbage now: tykworker's crash answer
    attacker = int(mark.read_text().split()[0])
    siblings = workers - {attacker}
    wait_for(lambda: attacker not in server.worker_pids(), what="the attacker to go")
    wait_for(lambda: len(server.worker_pids()) == 2, what="a replacement")
    _assert_healthy(server, server.worker_pids(), siblings)


def _links(pid: int) -> dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return out


def test_a_worker_holds_no_descriptor_of_the_supervisors(start_server):
    server = start_server("--workers", "1", plugins=HOSTILE)
    reply = server.dispatch("FdTable")
    table = {int(k): v for k, v in json.loads(reply.request.set_headers["X-Fds"]).items()}

    def channels(pid: int) -> set[str]:  # sockets and pipes (files are opened by path)
        return {v for k, v in _links(pid).items() if k > 2 and v.startswith(("socket:", "pipe:"))}

    supervisor, front = channels(server.proc.pid), channels(server.front_pid())
    assert not set(table.values()) & supervisor, (table, supervisor)
    assert not set(table.values()) & front  # (the bridge's peer end is a different inode)
    sockets = [v for v in table.values() if v.startswith("socket:")]
    pipes = [v for v in table.values() if v.startswith("pipe:")]
    assert len(sockets) <= 3, table  # the bridge connection and its own wake-up pair
    assert not pipes, table
    files = {Path(v).name for v in table.values() if v.startswith("/")}
    pid = reply.request.set_headers["X-Worker-Pid"]
    store = {"store.sqlite3", "store.sqlite3-wal", "store.sqlite3-shm"}
    journal = "memfd:tykworker-journal (deleted)"  # from the front (wire/journal.py)
    assert files <= {"scoreboard", f"stack.{pid}", "fd", journal, *store}, table  # its own
    assert psutil.Process(server.proc.pid).is_running()


def test_reload_does_not_signal_an_unrelated_process_named_in_the_pid_file(start_server, workdir):
    """Plugin code (same uid) can rewrite supervisor.pid: reload must check whom it signals."""
    server = start_server("--workers", "1")
    pidfile = workdir / ".tyk.sock.tykworker" / "supervisor.pid"
    assert pidfile.read_text().strip() == str(server.proc.pid)
    victim = subprocess.Popen(["sleep", "60"])  # dies of SIGHUP if signalled
    try:
        pidfile.write_text(f"{victim.pid}\n")
        done = subprocess.run(
            [sys.executable, "-m", "tykworker", "reload", "--socket", server.socket, "--wait", "2"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode != 0, done.stdout + done.stderr
        assert "not the supervisor" in done.stderr
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
    pidfile.write_text(f"{server.proc.pid}\n")
    done = subprocess.run(
        [sys.executable, "-m", "tykworker", "reload", "--socket", server.socket],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_worker_maps_only_its_own_slot_of_the_scoreboard(start_server):
    """Plugin code runs in workers: of the scoreboard (health's and status's source) it can
    reach only its own worker's slot, one page: not the header, not a sibling's slot (no
    mapping inherited from the supervisor, no descriptor to map more)."""
    page = mmap.ALLOCATIONGRANULARITY  # the header's page is at offset 0

    server = start_server("--workers", "2", plugins=HOSTILE)
    seen = set()
    with ThreadPoolExecutor(max_workers=8) as pool:  # concurrent calls reach both workers
        for _ in range(20):
            for reply in pool.map(lambda _: server.dispatch("BoardMaps"), range(16)):
                pid = int(reply.request.set_headers["X-Worker-Pid"])
                maps = json.loads(reply.request.set_headers["X-Maps"])
                assert len(maps) == 1, maps
                ((offset, size, _perms),) = maps
                assert size == page and offset >= page, maps
                seen.add((pid, offset))
            if len({p for p, _ in seen}) == 2:
                break
    assert len(seen) == 2 and len({o for _, o in seen}) == 2, seen  # each its own page


def test_health_does_not_trust_the_scoreboard_header(start_server):
    """A plugin of the workers' own uid can open the scoreboard by path (a worker maps only
    its slot, and as ``--user`` it cannot open the file): a forged generation must not make
    health answer NOT_SERVING while calls succeed."""
    from tests.integration.test_observability import check

    server = start_server("--workers", "1", plugins=HOSTILE)
    serving = check(server)
    from tykworker.wire.scoreboard import Scoreboard

    (board,) = server.workdir.glob(".*.tykworker/scoreboard")
    forged = server.dispatch("ForgeBoard", headers={"Board": str(board)})
    assert int(forged.request.set_headers["X-Worker-Pid"])
    assert Scoreboard.open(board, writable=False).header().generation == 999  # it did
    assert check(server) == serving, server.log()
    assert _pid_of(server, "Echo") in server.worker_pids()
