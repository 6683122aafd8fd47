"""Process titles (``ps``/``top`` show what each process is doing).

``set("worker 2 gen 3 running MyPreMiddleware")`` -> ``tykworker: worker 2 gen 3 running ...``.
Skips the system call when the title is unchanged; safe from several threads.
"""

from __future__ import annotations

import threading

import setproctitle

_current = ""
_lock = threading.Lock()  # a worker sets it from its loop and from its watchdog thread


def set(title: str) -> None:
    global _current
    with _lock:
        if title != _current:
            _current = title
            setproctitle.setproctitle("tykworker: " + title)
