"""Baseline: the single-process grpcio server Tyk users write today.

One process, ``grpc.server(ThreadPoolExecutor(max_workers=N))``, a generic raw-bytes handler
for ``/coprocess.Dispatcher/Dispatch`` that parses the Object, calls the hook named by
``hook_name`` with Tyk's ``(request, session, spec)`` convention, and serialises the same
Object back. Every hook runs under one GIL: this is what tykworker is compared with.

    python bench/baseline_server.py --socket /tmp/base.sock [--threads 16]
        [--middleware bench/plugins] [--max-message-mb 64]

The plugins in ``--middleware`` are written in Tyk style (``from tyk.decorators import *``).
Outside a Tyk gateway and outside tykworker's workers there is no ``tyk`` package, so this
file installs a BENCHMARK STAND-IN for ``tyk.decorators`` (``Hook``/``Event`` just record the
function) and a minimal request wrapper (``.object`` + ``add_header``/``delete_header``).
It is not tykworker's compatibility layer and supports only what bench/plugins uses.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import threading
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tykworker._proto import coprocess_object_pb2  # noqa: E402

# --- benchmark stand-in for tyk.decorators -------------------------------------------------

HOOKS: dict[str, Callable[..., Any]] = {}
EVENTS: dict[str, Callable[..., Any]] = {}


def _hook(fn: Callable[..., Any]) -> Callable[..., Any]:
    HOOKS[fn.__name__] = fn
    return fn


def _event(fn: Callable[..., Any]) -> Callable[..., Any]:
    EVENTS[fn.__name__] = fn
    return fn


class StandInRequest:
    """What a hook receives as ``request``: ``.object`` is the MiniRequestObject."""

    __slots__ = ("object",)

    def __init__(self, obj: Any) -> None:
        self.object = obj

    def add_header(self, key: str, value: str) -> None:
        self.object.set_headers[key] = value

    def delete_header(self, key: str) -> None:
        self.object.delete_headers.append(key)


def install_tyk_stand_in() -> None:
    """Make ``from tyk.decorators import *`` resolve to the stand-in (this process only)."""
    tyk = types.ModuleType("tyk")
    decorators = types.ModuleType("tyk.decorators")
    decorators.Hook = _hook  # type: ignore[attr-defined]
    decorators.Event = _event  # type: ignore[attr-defined]
    decorators.__all__ = ["Event", "Hook"]  # type: ignore[attr-defined]
    tyk.decorators = decorators  # type: ignore[attr-defined]
    sys.modules.setdefault("tyk", tyk)
    sys.modules.setdefault("tyk.decorators", decorators)


def load_middleware(directory: Path) -> None:
    for path in sorted(directory.glob("*.py")):
        name = f"bench_mw_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


# --- the server -----------------------------------------------------------------------------


def dispatch(data: bytes, context: grpc.ServicerContext) -> bytes:
    obj = coprocess_object_pb2.Object()
    obj.ParseFromString(data)
    handler = HOOKS.get(obj.hook_name)
    spec = dict(obj.spec)
    if handler is None:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"no hook {obj.hook_name!r}")
    if handler.__code__.co_argcount == 4:  # auth convention: (request, session, metadata, spec)
        metadata = dict(obj.metadata)
        _, session, metadata = handler(StandInRequest(obj.request), obj.session, metadata, spec)
        if session is not obj.session:
            obj.session.CopyFrom(session)
        obj.metadata.update(metadata)
    else:
        handler(StandInRequest(obj.request), obj.session, spec)
    return obj.SerializeToString()


def dispatch_event(data: bytes, context: grpc.ServicerContext) -> bytes:
    return b""  # EventReply is empty; the gateway ignores it


def build_server(socket: str, threads: int, max_message_mb: int) -> grpc.Server:
    limit = max_message_mb * 1024 * 1024
    server = grpc.server(
        ThreadPoolExecutor(max_workers=threads),
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ],
    )
    handlers = {
        "Dispatch": grpc.unary_unary_rpc_method_handler(dispatch),
        "DispatchEvent": grpc.unary_unary_rpc_method_handler(dispatch_event),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("coprocess.Dispatcher", handlers),)
    )
    path = socket.removeprefix("unix://").removeprefix("unix:")
    Path(path).unlink(missing_ok=True)
    server.add_insecure_port(f"unix:{path}")
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="single-process grpcio baseline for benchmarks")
    ap.add_argument("--socket", required=True, help="Unix socket path (or unix://PATH)")
    ap.add_argument("--threads", type=int, default=16, help="ThreadPoolExecutor max_workers")
    ap.add_argument("--middleware", type=Path, default=ROOT / "bench" / "plugins")
    ap.add_argument("--max-message-mb", type=int, default=64)
    args = ap.parse_args(argv)

    install_tyk_stand_in()
    load_middleware(args.middleware)
    server = build_server(args.socket, args.threads, args.max_message_mb)
    stopped = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    print(f"baseline: serving {sorted(HOOKS)} on {args.socket}", flush=True)
    stopped.wait()
    server.stop(grace=1).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
