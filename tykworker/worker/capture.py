"""``serve --capture DIR``: the worker writes the Object of each call it serves (or one in N)
to DIR, for replay with ``tykworker call --object-file`` or ``tykworker.testing``.

Format: one file per call, ``<UTC time>-<pid>-<hook>.json``, the protobuf JSON mapping of
the Object as received (proto field names; bytes in base64), so ``json_format.Parse`` or
``cli.objects.object_from_bytes`` reads it back exactly. Redaction, as in the logs
(``tyk.gateway.secrets_of``): the values of the ``Authorization``, ``Proxy-Authorization``
and ``Cookie`` request headers are replaced by ``[redacted]``, and so is every other
occurrence of those secrets (or their parts: the token without its scheme, each cookie
value) in the Object: URL, session, bodies. Anything else is written as received (other
credentials in a body, say): treat DIR as sensitive (created with mode 0700, files 0600).

Bounds, over all workers: at most ``capture_max_files`` files and ``capture_max_mb`` MiB
in DIR. Each write holds an exclusive ``flock`` on ``DIR/.lock`` while it counts the files
and their bytes and adds its own, so concurrent workers cannot overshoot. A call whose file
would pass the byte bound is skipped; once the count is reached (or DIR cannot be written)
the worker stops capturing and logs it once. Only Dispatch calls are captured, before the
hook runs (a call that hangs or crashes its worker is captured too).

Cost: nothing when capture is off (the runtime holds ``None``: one ``if`` per call); when
on, a parse, a JSON dump and a few syscalls per captured call. Never raises into a call.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Final

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from tykworker._proto import coprocess_mini_request_object_pb2 as request_pb2
from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker._proto import coprocess_response_object_pb2 as response_pb2
from tykworker.config import Settings
from tykworker.worker.tyk.gateway import REDACTED, SECRET_HEADERS, secrets_of

log = logging.getLogger("tykworker.capture")

SUFFIX: Final = ".json"
_SECRET_NAMES: Final = frozenset(name.lower() for name in SECRET_HEADERS)
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.-]+")


def redacted_json(payload: bytes | bytearray) -> tuple[str, bytes] | None:
    """``(hook name, capture file content)`` of one Dispatch payload; ``None`` when it is
    not an Object."""
    try:
        obj = object_pb2.Object.FromString(payload)  # type: ignore[arg-type]  # upb: any buffer
    except DecodeError:
        return None
    headers = obj.request.headers
    found: set[str] = set()
    for name in list(headers):
        if name.lower() in _SECRET_NAMES and headers[name]:
            found.update(secrets_of({name.title(): headers[name]}))
            headers[name] = REDACTED
    secrets = sorted(found, key=len, reverse=True)
    for secret in secrets:  # bodies are base64 in the JSON: redacted here
        _redact_body(obj.request, secret)
        if obj.HasField("response"):
            _redact_body(obj.response, secret)
    text = json_format.MessageToJson(obj, preserving_proto_field_name=True, indent=1)
    for secret in secrets:  # longest first; as JSON text, escapes included
        text = text.replace(json.dumps(secret)[1:-1], REDACTED)
    return obj.hook_name, text.encode("utf-8") + b"\n"


def _redact_body(
    message: request_pb2.MiniRequestObject | response_pb2.ResponseObject, secret: str
) -> None:
    message.raw_body = message.raw_body.replace(secret.encode(), REDACTED.encode())
    message.body = message.body.replace(secret, REDACTED)


def file_name(hook_name: str, now: float, pid: int) -> str:
    """``20261202T010203.123456Z-<pid>-<hook>.json``: sorted by time, unique per worker."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    micros = int(now * 1_000_000) % 1_000_000
    hook = _UNSAFE.sub("_", hook_name)[:64] or "_"
    return f"{stamp}.{micros:06d}Z-{pid}-{hook}{SUFFIX}"


class Capture:
    """Writes captured calls of this worker into one folder, within the shared bounds."""

    def __init__(self, folder: Path, every: int, max_files: int, max_bytes: int) -> None:
        self.folder = folder
        self.every = max(1, every)
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._seen = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Capture | None:
        if not settings.capture:
            return None
        return cls(
            Path(settings.capture),
            settings.capture_every,
            settings.capture_max_files,
            settings.capture_max_mb * 1024 * 1024,
        )

    def record(self, payload: bytes | bytearray) -> bool:
        """Capture ``payload`` if it is this worker's turn; ``False`` once capturing has
        stopped for good (bound reached, or the folder cannot be written)."""
        self._seen += 1
        if self._seen % self.every:
            return True
        try:
            return self._write(payload)
        except Exception as exc:
            log.warning("capture into %s stopped: %s", self.folder, exc)
            return False

    def _write(self, payload: bytes | bytearray) -> bool:
        captured = redacted_json(payload)
        if captured is None:
            return True
        hook_name, content = captured
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            files, used = self._usage()
            if files >= self.max_files:
                log.warning(
                    "capture folder %s holds %d files (capture_max_files): this worker "
                    "captures no more calls (remove files and reload to capture again)",
                    self.folder,
                    files,
                )
                return False
            if used + len(content) > self.max_bytes:
                log.info("capture: a %d-byte call skipped (capture_max_mb)", len(content))
                return True
            path = self.folder / file_name(hook_name, time.time(), os.getpid())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(content)
            return True
        finally:
            with contextlib.suppress(OSError):
                os.close(lock)

    def _usage(self) -> tuple[int, int]:
        files = used = 0
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
                    files += 1
                    with contextlib.suppress(OSError):
                        used += entry.stat().st_size
        return files, used
