"""Hooks used by the integration tests, written the way Tyk users write them."""

import ctypes
import os
import re
import signal
import subprocess
import threading
import time

from gateway import TykGateway as tyk
from tyk.decorators import *  # noqa: F403

_leak = []


@Hook  # noqa: F405
def Echo(request, session, spec):
    """Adds the worker pid (tests use it to see which worker served a call)."""
    request.add_header("X-Worker-Pid", str(os.getpid()))
    request.add_header("X-Version", "1")
    return request, session


@Hook  # noqa: F405
def Sleep(request, session, spec):
    time.sleep(float(request.get_header("Sleep") or "0.2"))
    request.add_header("X-Worker-Pid", str(os.getpid()))
    return request, session


@Hook  # noqa: F405
def Raise(request, session, spec):
    raise RuntimeError("plugin failure on purpose")


@Hook  # noqa: F405
def Exit(request, session, spec):
    os._exit(7)


@Hook  # noqa: F405
def Segfault(request, session, spec):
    ctypes.string_at(0)


@Hook  # noqa: F405
def Leak(request, session, spec):
    _leak.append(bytearray(8 * 1024 * 1024))
    request.add_header("X-Worker-Pid", str(os.getpid()))
    return request, session


@Hook  # noqa: F405
def Gate(request, session, spec):
    """Holds its worker until the test releases the gate: creates the file named by the
    ``Gate`` header (tests/integration/conftest.py ``gate``)."""
    path = request.get_header("Gate")
    while not os.path.exists(path):
        time.sleep(0.005)
    request.add_header("X-Worker-Pid", str(os.getpid()))
    return request, session


@Hook  # noqa: F405
def Orphan(request, session, spec):
    child = subprocess.Popen(["sleep", "30"])  # never waited for: orphaned when we exit
    request.add_header("X-Orphan-Pid", str(child.pid))
    return request, session


@Hook  # noqa: F405
def BigBody(request, session, spec):
    request.object.raw_body = request.object.raw_body[::-1]
    return request, session


@Hook  # noqa: F405
def Inflate(request, session, spec):
    """A reply body of ``Size`` bytes (tests of replies over ``max_message_mb``)."""
    request.object.raw_body = b"x" * int(request.get_header("Size") or "0")
    request.add_header("X-Worker-Pid", str(os.getpid()))
    return request, session


@Hook  # noqa: F405
def TrapTerm(request, session, spec):
    """Installs a SIGTERM handler that ignores the signal, as some libraries do."""
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    request.add_header("X-Worker-Pid", str(os.getpid()))
    return request, session


@Hook  # noqa: F405
def Store(request, session, spec):
    key = request.get_header("Key")
    if request.object.method == "PUT":
        tyk.store_data(key, request.object.raw_body.decode(), 60)
    request.add_header("X-Value", tyk.get_data(key).decode())
    request.add_header("X-Worker-Pid", str(os.getpid()))
    time.sleep(float(request.get_header("Hold") or "0"))  # keep this worker busy
    gate = request.get_header("Gate")  # or until the test releases it (conftest ``gate``)
    while gate and not os.path.exists(gate):
        time.sleep(0.005)
    return request, session


@Hook  # noqa: F405
def Auth(request, session, metadata, spec):
    if request.get_header("Authorization") == "secret":
        metadata["token"] = "secret"
        session.rate = 100
        session.per = 1
    else:
        request.object.return_overrides.response_code = 403
        request.object.return_overrides.response_error = "denied"
    return request, session, metadata


@Hook  # noqa: F405
def AddResponseHeader(request, response, session, metadata, spec):
    response.headers["X-Added"] = "yes"
    return response


def _chaos_child(detach):
    # A marker argument lets the tests find the child anywhere in the process table.
    subprocess.Popen(["sleep", "30.25"], start_new_session=detach)


def _sleep_in_c():
    # Stuck in C for good, GIL released (like a C library's blocking call that retries on
    # EINTR): SIGTERM blocked here so that it cannot cut the sleep short.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    ctypes.CDLL(None).sleep(3600)


def _fail():
    raise RuntimeError("plugin failure on purpose")


_CHAOS = {
    "hang": lambda: threading.Event().wait(),
    # Catastrophic backtracking: stuck in C (the regex engine) holding the GIL.
    "spin": lambda: re.match(r"(a+)+$", "a" * 64 + "b"),
    "raise": lambda: _fail(),
    "exit": lambda: os._exit(7),
    "segv": lambda: ctypes.string_at(0),
    "csleep": lambda: _sleep_in_c(),
    "leak": lambda: _leak.append(bytearray(8 * 1024 * 1024)),
    "orphan": lambda: _chaos_child(False),
    "daemon": lambda: _chaos_child(True),
}


@Hook  # noqa: F405
def Chaos(request, session, spec):
    """Echoes the caller's ``Call-Id`` after doing what its ``Do`` header says (the
    reliability tests match every reply to its call with it)."""
    action = _CHAOS.get(request.get_header("Do") or "")
    if action is not None:
        action()
    time.sleep(float(request.get_header("Sleep") or "0"))
    request.add_header("X-Call-Id", request.get_header("Call-Id") or "")
    request.add_header("X-Worker-Pid", str(os.getpid()))
    return request, session


@Hook  # noqa: F405
def LeakSecrets(request, session, spec):
    """Logs and raises with the request's credentials in the text."""
    auth, cookie = request.get_header("Authorization"), request.get_header("Cookie")
    tyk.log(f"checking {auth} and {cookie}", "error")
    raise PermissionError(f"rejected Authorization={auth!r} Cookie={cookie!r} {request.object!r}")


@Hook  # noqa: F405
def WhoAmI(request, session, spec):
    """The worker's credentials, and whether the embedded store works for it."""
    tyk.store_data("whoami", str(os.getuid()), 60)
    request.add_header("X-Uid", str(os.getuid()))
    request.add_header("X-Gid", str(os.getgid()))
    request.add_header("X-Groups", ",".join(map(str, sorted(os.getgroups()))))
    request.add_header("X-Stored", tyk.get_data("whoami").decode())
    return request, session


@Hook  # noqa: F405
def ReportResponse(request, response, session, metadata, spec):
    """Reports what a Response hook received (headers X-Seen-*), drops ``Set-Cookie`` from
    ``headers`` and replaces ``Content-Type``, so the gateway's header sync can be seen."""
    cookies = [v for h in response.multivalue_headers if h.key == "Set-Cookie" for v in h.values]
    seen = {
        "X-Seen-Status": str(response.status_code),
        "X-Seen-Body": response.raw_body.decode(),
        "X-Seen-Cookies": ",".join(cookies),
        "X-Seen-Rate": str(session.rate),
        "X-Seen-Metadata": ",".join(f"{k}={v}" for k, v in sorted(metadata.items())),
        "X-Seen-Config": spec.get("config_data", ""),
    }
    response.headers.update(seen)
    if "Set-Cookie" in response.headers:
        del response.headers["Set-Cookie"]
    response.headers["Content-Type"] = "application/json"
    return response


@Hook  # noqa: F405
def ReportSession(request, session, metadata, spec):
    """Reports the session, metadata and config_data a request hook received."""
    request.add_header("X-Seen-Rate", str(session.rate))
    request.add_header("X-Seen-Metadata", ",".join(f"{k}={v}" for k, v in sorted(metadata.items())))
    request.add_header("X-Seen-Config", spec.get("config_data", ""))
    request.add_header("X-Seen-Path", request.object.url)
    return request, session, metadata


@Hook  # noqa: F405
def ReadStore(request, session, spec):
    """Sets ``X-Value`` to the stored value named by the ``Key`` header."""
    request.add_header("X-Value", tyk.get_data(request.get_header("Key")).decode())
    return request, session


@Hook  # noqa: F405
def EditHeadersMap(request, session, spec):
    """Edits ``request.headers`` (ignored by the gateway) instead of ``set_headers``."""
    request.object.headers["X-Ignored"] = "yes"
    return request, session
