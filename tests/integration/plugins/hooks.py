"""Hooks used by the integration tests, written the way Tyk users write them."""

import ctypes
import os
import subprocess
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
def Orphan(request, session, spec):
    subprocess.Popen(["sleep", "30"])
    return request, session


@Hook  # noqa: F405
def BigBody(request, session, spec):
    request.object.raw_body = request.object.raw_body[::-1]
    return request, session


@Hook  # noqa: F405
def Store(request, session, spec):
    key = request.get_header("Key")
    if request.object.method == "PUT":
        tyk.store_data(key, request.object.raw_body.decode(), 60)
    request.add_header("X-Value", tyk.get_data(key).decode())
    request.add_header("X-Worker-Pid", str(os.getpid()))
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
