"""Security of the real server: socket ownership and modes, refusing what is not ours,
TCP only when asked, no credentials in logs, workers without root's privileges."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from .conftest import make_object, session_processes, wait_for

pytestmark = pytest.mark.integration

TOKEN = "tok-9f8e7d6c5b4a"  # the secret part of the Authorization header
COOKIE = "sess-0a1b2c3d4e5f"  # the value of one cookie
SECRETS = {"Authorization": f"Bearer {TOKEN}", "Cookie": f"theme=dark; session={COOKIE}"}
IS_ROOT = os.geteuid() == 0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tykworker", *args], capture_output=True, text=True, timeout=60
    )


def _other_group() -> int:
    """A group the sockets can be given: not our primary one when we can choose."""
    if IS_ROOT:
        return grp.getgrnam("nogroup").gr_gid if _has_group("nogroup") else 65534
    others = [g for g in os.getgroups() if g != os.getegid()]
    return others[0] if others else os.getegid()


def _has_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_sockets_are_0660_with_the_configured_group_whatever_the_umask(start_server, workdir):
    raw = str(workdir / "raw.sock")
    gid = _other_group()
    with _umask(0):  # the most permissive umask must not leak into the sockets
        server = start_server("--workers", "1", "--raw-socket", raw, "--socket-group", str(gid))
    for path in (server.socket, raw):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, gid), path
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"


def test_runtime_dir_is_private_even_when_it_existed_open(start_server, workdir):
    runtime = workdir / "run"
    runtime.mkdir(mode=0o777)
    os.chmod(runtime, 0o777)
    server = start_server("--workers", "1", "--runtime-dir", str(runtime))
    assert server.dispatch("Store", headers={"Key": "k"}, method="PUT", body=b"v")
    assert stat.S_IMODE(os.stat(runtime).st_mode) == 0o750
    for path in runtime.iterdir():  # reachable only through the private directory anyway
        assert os.stat(path).st_mode & 0o002 == 0, f"{path} is writable by others"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--socket-mode", "666"], "must not grant access to others"),
        (["--socket-mode", "662"], "must not grant access to others"),
        (["--socket-group", "no-such-group-tw"], "no such group"),
        (["--user", "no-such-user-tw"], "no such user"),
    ],
)
def test_unsafe_or_unknown_settings_are_refused_before_binding(workdir, flags, message):
    done = _cli("serve", "--socket", str(workdir / "tyk.sock"), *flags)
    assert done.returncode == 2 and message in done.stderr
    assert not (workdir / "tyk.sock").exists()


def test_raw_socket_path_holding_a_file_is_refused_and_a_stale_one_replaced(start_server, workdir):
    raw = workdir / "raw.sock"
    raw.write_text("precious")
    refused = _cli(
        "serve",
        "--socket",
        str(workdir / "tyk.sock"),
        "--raw-socket",
        str(raw),
        "--middleware",
        str(workdir),
    )
    assert refused.returncode == 2 and "not a socket" in refused.stderr
    assert raw.read_text() == "precious"
    raw.unlink()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(raw))
    stale.close()  # a socket file nobody listens on, as a crash leaves it
    server = start_server("--workers", "1", "--raw-socket", str(raw))
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(raw))  # the new server listens there now
    busy = _cli("serve", "--socket", str(workdir / "other.sock"), "--raw-socket", str(raw))
    assert busy.returncode == 2 and "already listening" in busy.stderr
    assert server.proc.poll() is None


def test_no_tcp_listener_unless_asked(start_server):
    server = start_server("--workers", "2")
    for proc in session_processes(server.proc.pid):
        assert proc.net_connections(kind="inet") == [], proc


def test_credentials_never_reach_the_log(start_server, gate):
    server = start_server("--workers", "1", "--hook-timeout", "0.5", "--log-level", "debug")
    reply = server.dispatch("LeakSecrets", headers=SECRETS)
    assert reply.request.return_overrides.response_code == 500
    # A stuck call too (its gate is never opened): the timeout line and the stack dumps.
    stuck = server.dispatch("Gate", headers={**SECRETS, "Gate": str(gate)})
    assert stuck.request.return_overrides.response_code == 504
    log = wait_for(lambda: "Fatal Python error: Aborted" in server.log() and server.log())
    wait_for(lambda: len(server.worker_pids()) == 1, what="stuck worker replaced")
    assert "PermissionError: rejected Authorization=" in log  # the failure is logged...
    assert "[redacted]" in log
    for secret in (TOKEN, COOKIE):  # ...without the credentials
        assert secret not in log


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user on this system")


@pytest.mark.skipif(not IS_ROOT, reason="dropping privileges needs the server to start as root")
def test_workers_drop_root_privileges_before_importing_plugins(start_server, workdir):
    nobody = _nobody()
    os.chmod(workdir, 0o755)  # plugins must be readable by the workers' user
    server = start_server("--workers", "2", "--user", "nobody", "--max-requests", "3")
    reply = server.dispatch("WhoAmI")
    headers = reply.request.set_headers
    assert (headers["X-Uid"], headers["X-Gid"]) == (str(nobody.pw_uid), str(nobody.pw_gid))
    assert "0" not in headers["X-Groups"].split(",")
    assert headers["X-Stored"] == str(nobody.pw_uid)  # the embedded store works for it
    for pid in server.worker_pids():
        uids, gids = psutil.Process(pid).uids(), psutil.Process(pid).gids()
        assert set(uids) == {nobody.pw_uid} and set(gids) == {nobody.pw_gid}
    assert psutil.Process(server.front_pid()).uids().effective == 0
    # Each worker maps its own scoreboard slot before the drop: status shows them all.
    status = _cli("status", "--socket", server.socket)
    assert all(str(pid) in status.stdout for pid in server.worker_pids()), status.stdout
    # Recycling (--max-requests 3) and reloading keep working as that user.
    for _ in range(8):
        assert server.dispatch("WhoAmI").request.set_headers["X-Uid"] == str(nobody.pw_uid)
    server.signal(signal.SIGHUP)
    server.wait_notify("READY=1")
    assert server.dispatch("WhoAmI").request.set_headers["X-Uid"] == str(nobody.pw_uid)
    # Workers cannot touch the supervisor's files in the runtime directory.
    runtime = workdir / ".tyk.sock.tykworker"
    assert stat.S_IMODE(os.stat(runtime).st_mode) == 0o1770
    assert os.stat(runtime / "bridge.sock").st_uid == 0
    # The parent-death signal survives the credential change: workers leave with the
    # supervisor even when it is SIGKILLed.
    os.kill(server.proc.pid, signal.SIGKILL)
    wait_for(lambda: session_processes(server.proc.pid) == [], what="workers gone")


def test_user_setting_without_root_is_refused_before_forking(monkeypatch):
    from tykworker.cli.commands import CHILDREN
    from tykworker.config import load_settings
    from tykworker.errors import ConfigError
    from tykworker.supervisor import process as supervisor

    nobody = _nobody()
    settings = load_settings({"user": "root", "socket": "/nonexistent/tyk.sock"}, environ={})
    monkeypatch.setattr(f"{supervisor.__name__}.os.geteuid", lambda: nobody.pw_uid)
    monkeypatch.setattr(f"{supervisor.__name__}.os.getuid", lambda: nobody.pw_uid)
    with pytest.raises(ConfigError, match="need the server to start as root"):
        supervisor.Supervisor(settings, lambda: settings, CHILDREN)._worker_identity()


def test_malformed_payload_with_credentials_logs_no_value(start_server):
    server = start_server("--workers", "1", "--log-level", "debug")
    payload = make_object("Echo", headers=SECRETS).SerializeToString()
    reply = server.dispatch_raw(payload[:-3])  # truncated: not an Object any more
    assert reply  # a defined answer (400), checked in test_bad_input
    for secret in (TOKEN, COOKIE):
        assert secret not in server.log()


def test_identity_settings_resolve_names_and_numbers():
    from tykworker.config import load_settings

    nobody = _nobody()
    plain = load_settings({}, environ={})
    assert plain.worker_identity() is None and plain.socket_gid() is None
    by_name = load_settings({"user": "nobody"}, environ={}).worker_identity()
    assert by_name is not None and by_name[:2] == (nobody.pw_uid, nobody.pw_gid)
    assert nobody.pw_gid in by_name[2] and 0 not in by_name[2]
    # A uid with no passwd entry (containers): its group is the same number.
    assert load_settings({"user": "54321"}, environ={}).worker_identity() == (
        54321,
        54321,
        (54321,),
    )
    # The group alone, or overriding the user's.
    both = load_settings({"user": "nobody", "group": "0"}, environ={}).worker_identity()
    assert both is not None and both[1] == 0 and both[2][0] == 0
    env = {"TYKWORKER_SOCKET_GROUP": str(os.getegid())}
    assert load_settings({}, environ=env).socket_gid() == os.getegid()
