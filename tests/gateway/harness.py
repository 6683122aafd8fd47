"""The parts of the end-to-end suite: a recording upstream, bundle zips and a real gateway.

* ``Upstream``: a threaded HTTP server in the test process. Every request is recorded
  (method, path, query, headers, body) and answered with a JSON summary of it, or with the
  body of a registered static file (``/bundles/<name>``: how the gateway downloads bundles).
  ``/echo...`` paths answer the request body back byte for byte.
* ``Gateway``: one ``tyk start --conf`` process with a minimal ``tyk.conf`` written into a
  temporary folder; API definitions are JSON files in its ``app_path``. Readiness and API
  (re)loads are conditions read from the admin API, never sleeps.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.integration.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
SECRET = "gateway-test-secret"
#: Tyk's error template, as its own ``templates/error.json`` renders it.
ERROR_TEMPLATE = '{\n    "error": "{{.Message}}"\n}'


def find_gateway() -> str | None:
    """The gateway executable: ``$TYKWORKER_TEST_GATEWAY``, else the ``unpack`` script of
    ``../shared/tyk-gateway`` next to the repository (or the workplace's
    ``/work/shared/tyk-gateway``), which prints the unpacked binary's path; else ``None``."""
    configured = os.environ.get("TYKWORKER_TEST_GATEWAY")
    if configured:
        return configured
    candidates = [ROOT.parent / "shared", Path("/work/shared")]
    unpack = next(
        (
            c / "tyk-gateway" / "unpack"
            for c in candidates
            if (c / "tyk-gateway" / "unpack").is_file()
        ),
        None,
    )
    if unpack is None:
        return None
    out = subprocess.run([str(unpack)], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """Recording upstream + static file server (bundles). Thread-safe."""

    server: ThreadingHTTPServer
    seen: list[Seen] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def record(self, seen: Seen) -> None:
        with self.lock:
            self.seen.append(seen)

    def last(self, path_prefix: str) -> Seen:
        """The latest request whose path starts with ``path_prefix``."""
        with self.lock:
            for item in reversed(self.seen):
                if item.path.startswith(path_prefix):
                    return item
        raise AssertionError(f"the upstream saw no request for {path_prefix}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_upstream() -> Upstream:
    upstream: Upstream

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urllib.parse.urlsplit(self.path)
            if parts.path.startswith("/bundles/"):
                data = upstream.files.get(parts.path.removeprefix("/bundles/"))
                self._answer(200 if data is not None else 404, data or b"", "application/zip")
                return
            seen = Seen(
                self.command,
                parts.path,
                urllib.parse.parse_qs(parts.query, keep_blank_values=True),
                {k.lower(): v for k, v in self.headers.items()},
                body,
            )
            upstream.record(seen)
            if parts.path.startswith("/echo"):
                self._answer(200, body, "application/octet-stream")
                return
            summary = {"method": seen.method, "path": seen.path, "query": seen.query}
            self._answer(200, json.dumps(summary).encode(), "application/json")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    upstream = Upstream(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return upstream


def bundle_zip(files: dict[str, str], custom_middleware: dict[str, Any]) -> bytes:
    """A bundle zip as ``tyk bundle build`` makes it: the files plus ``manifest.json``
    (no signature: the gateway checks one only with ``public_key_path``)."""
    checksum = hashlib.md5(b"".join(text.encode() for text in files.values())).hexdigest()
    manifest = {
        "file_list": list(files),
        "custom_middleware": custom_middleware,
        "checksum": checksum,
        "signature": "",
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        for name, text in files.items():
            archive.writestr(name, text)
    return out.getvalue()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30.0,
) -> Response:
    """One HTTP request; any status is a ``Response`` (never raises for 4xx/5xx)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return Response(answer.status, dict(answer.headers.items()), answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return Response(error.code, dict(error.headers.items()), error.read())


def redis_parts(url: str) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    database = int(parts.path.strip("/") or 0)
    return {
        "type": "redis",
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "database": database,
        "optimisation_max_idle": 100,
        "optimisation_max_active": 500,
    }


def gateway_conf(folder: Path, socket_path: str, redis_url: str, bundle_url: str) -> dict[str, Any]:
    """A minimal ``tyk.conf`` (a config file disables every built-in default)."""
    templates = folder / "templates"
    templates.mkdir(parents=True, exist_ok=True)
    (templates / "error.json").write_text(ERROR_TEMPLATE)
    for name in ("apps", "middleware"):
        (folder / name).mkdir(exist_ok=True)
    return {
        "listen_address": "127.0.0.1",
        "listen_port": free_port(),
        "secret": SECRET,
        "template_path": str(templates),
        "app_path": str(folder / "apps"),
        "middleware_path": str(folder / "middleware"),
        "pid_file_location": str(folder / "tyk.pid"),
        "storage": redis_parts(redis_url),
        "enable_analytics": False,
        "max_idle_connections_per_host": 500,
        "enable_bundle_downloader": True,
        "bundle_base_url": bundle_url,
        "coprocess_options": {
            "enable_coprocess": True,
            "coprocess_grpc_server": "unix://" + socket_path,
            "grpc_recv_max_size": 104857600,
            "grpc_send_max_size": 104857600,
        },
    }


class Gateway:
    """One running gateway; ``conf`` is written to ``folder/tyk.conf`` as given."""

    def __init__(self, binary: str, folder: Path, conf: dict[str, Any]) -> None:
        self.folder = folder
        self.conf = conf
        self.apps = Path(conf["app_path"])
        self.url = f"http://127.0.0.1:{conf['listen_port']}"
        conf_path = folder / "tyk.conf"
        conf_path.write_text(json.dumps(conf, indent=2))
        self.log_path = folder / "gateway.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, "start", "--conf", str(conf_path)],
            cwd=folder,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited {self.proc.returncode}; log:\n{self.log()}")

    def wait_up(self, timeout: float = 60.0) -> Gateway:
        def up() -> bool:
            self._alive()
            try:
                return http(self.url + "/hello", timeout=2).status == 200
            except OSError:
                return False

        wait_for(up, timeout, "gateway /hello")
        return self

    def admin(self, path: str, method: str = "GET", body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        answer = http(self.url + path, method, {"x-tyk-authorization": SECRET}, data, timeout=10)
        assert answer.status < 300, (path, answer.status, answer.body)
        return answer.json()

    def api_ids(self) -> set[str]:
        return {api["api_id"] for api in self.admin("/tyk/apis")}

    def put_apis(self, *definitions: dict[str, Any]) -> None:
        """Write API definitions and hot-reload; wait until the gateway lists them all."""
        for definition in definitions:
            (self.apps / f"{definition['api_id']}.json").write_text(json.dumps(definition))
        wanted = {d["api_id"] for d in definitions}
        self.reload_until(lambda: wanted <= self.api_ids(), what=f"APIs {sorted(wanted)} loaded")

    def reload_until(self, condition: Any, what: str, timeout: float = 60.0) -> None:
        last = [0.0]

        def done() -> bool:
            self._alive()
            if condition():
                return True
            if time.monotonic() - last[0] > 2:  # one reload request every 2 s at most
                last[0] = time.monotonic()
                with contextlib.suppress(OSError, AssertionError):
                    self.admin("/tyk/reload/group")
            return False

        wait_for(done, timeout, what)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def api(api_id: str, listen_path: str, target: str, **extra: Any) -> dict[str, Any]:
    """A classic API definition; ``extra`` keys are set at the top level."""
    return {
        "name": api_id,
        "api_id": api_id,
        "org_id": "default",
        "use_keyless": True,
        "active": True,
        "proxy": {"listen_path": listen_path, "target_url": target, "strip_listen_path": True},
        "version_data": {"not_versioned": True, "versions": {"Default": {"name": "Default"}}},
        **extra,
    }
