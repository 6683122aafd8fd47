"""Logging set-up: one handler on stderr, text or JSON lines, configured once in cli.py.

Every process (supervisor, front, workers) inherits the configuration through ``fork``.
Call-path lines carry ``call_id``, ``hook``, ``worker_pid`` and ``generation`` in
``extra``; both formats print them. Sensitive header values are never passed to loggers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Final

_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items() if v is not None)
        line = (
            f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} [{record.process}] "
            f"{record.name}: {record.getMessage()}"
        )
        if extras:
            line += f" ({extras})"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "pid": record.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_extras(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")
