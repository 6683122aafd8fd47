"""Benchmark hooks, written the way Tyk Python plugins are written.

tykworker loads this directory as its ``--middleware``; bench/baseline_server.py loads the
same file with a small stand-in for ``tyk.decorators`` so both servers run identical code.

* ``Trivial``  sets one request header (``request.add_header``, Tyk's own sample API).
* ``CpuBound`` about 1 ms of pure-Python work on the body (JSON decode/encode + hashing):
  holds the GIL the whole time, so threads cannot run it in parallel.
* ``Blocking`` sleeps 50 ms (stands for a slow upstream call made from a plugin).
* ``AsyncBlocking`` the same 50 ms as an ``async def`` awaiting ``asyncio.sleep`` (an
  upstream call made with an async client): many run at once per worker (bench/async.py).
* ``Fickle`` a fast hook that turns slow now and then: ``Trivial``, but every
  ``FICKLE_EVERY``-th call in a process sleeps ``FICKLE_SLEEP`` s (a cache miss that goes
  to an upstream). Its average stays far below the front's fast limit, so its calls are
  pipelined, and those sent behind a slow one wait for it (bench/fairness.py
  ``--turns-slow``).
* ``BenchAuth`` a custom-auth hook (``auth_check``): accepts ``Authorization: bench-key``
  and returns a session with a generous rate limit and ``metadata["token"]``, which is what
  makes the gateway treat the request as authenticated (bench/gateway.py).
"""

import asyncio
import hashlib
import json
import time

from tyk.decorators import *  # noqa: F403  (Tyk plugin style: brings in Hook)

#: Rounds of JSON + hashing work in CpuBound; tuned for ~1 ms on a ~3 GHz core with a
#: 1 KB body (bench/make_payloads.py). ``python bench/plugins/bench_hooks.py`` prints the
#: time one call takes on this machine.
CPU_ROUNDS = 12

#: ``Fickle``: one call in ``FICKLE_EVERY`` (per process) sleeps ``FICKLE_SLEEP`` seconds:
#: 10 µs per call on average, against the front's 2 ms fast limit.
FICKLE_EVERY = 1000
FICKLE_SLEEP = 0.01
_fickle_calls = 0


def _cpu_work(body: bytes) -> str:
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        doc = {"raw": body.decode("latin-1")}
    digest = hashlib.sha256(body).hexdigest()
    acc = 0
    for i in range(CPU_ROUNDS):
        text = json.dumps(doc, sort_keys=True)
        doc = json.loads(text)
        if isinstance(doc, dict):
            doc["round"] = i
            doc["digest"] = digest
        for ch in digest:
            acc = (acc * 31 + ord(ch)) & 0xFFFFFFFF
        digest = hashlib.sha256((digest + text[:64]).encode()).hexdigest()
        for j in range(400):
            acc ^= (acc << 1 ^ j) & 0xFFFFFFFF
    return f"{digest[:16]}-{acc:08x}"


@Hook  # noqa: F405
def Trivial(request, session, spec):
    request.add_header("X-Bench", "trivial")
    return request, session


@Hook  # noqa: F405
def CpuBound(request, session, spec):
    request.add_header("X-Bench", _cpu_work(request.object.raw_body))
    return request, session


@Hook  # noqa: F405
def Blocking(request, session, spec):
    time.sleep(0.05)
    request.add_header("X-Bench", "blocking")
    return request, session


@Hook  # noqa: F405
def Fickle(request, session, spec):
    global _fickle_calls
    _fickle_calls += 1
    if _fickle_calls % FICKLE_EVERY == 0:
        time.sleep(FICKLE_SLEEP)
    request.add_header("X-Bench", "fickle")
    return request, session


@Hook  # noqa: F405
async def AsyncBlocking(request, session, spec):
    await asyncio.sleep(0.05)
    request.add_header("X-Bench", "async-blocking")
    return request, session


@Hook  # noqa: F405
def BenchAuth(request, session, metadata, spec):
    if request.object.headers.get("Authorization") == "bench-key":
        session.rate = 1000000.0
        session.per = 1.0
        session.quota_max = -1
        metadata["token"] = "bench-key"
    return request, session, metadata


if __name__ == "__main__":  # calibration: how long CpuBound's work takes here
    _body = json.dumps(
        {"items": [{"sku": f"SKU-{i:04d}", "qty": i, "price": i * 1.25} for i in range(20)]}
    ).encode()
    _t = time.perf_counter()
    for _ in range(200):
        _cpu_work(_body)
    print(f"CpuBound work: {(time.perf_counter() - _t) / 200 * 1e6:.0f} µs per call")
