"""Process titles (``ps``/``top`` show what each process is doing).

``set("worker 2 gen 3 running MyPreMiddleware")`` -> ``tykworker: worker 2 gen 3 running ...``.
Skips the system call when the title is unchanged (it runs twice per call in workers).
"""

from __future__ import annotations

import setproctitle

_current = ""


def set(title: str) -> None:
    global _current
    if title != _current:
        _current = title
        setproctitle.setproctitle("tykworker: " + title)
