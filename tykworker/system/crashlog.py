"""Attributed stack dumps of workers that die: one log record per death, naming the call.

Each worker points ``faulthandler`` at a file of its own, ``<runtime_dir>/stack.<pid>``,
opened before any plugin is imported. A fatal signal (the supervisor's SIGABRT after a
deadline, or a segfault or abort in plugin C code) makes faulthandler write the Python
stack of every thread there from its C signal handler: it needs neither the GIL nor a
working interpreter. After reaping the worker, the supervisor reads the file and logs it
as one record together with the call id and hook that the worker's scoreboard slot showed
when it died, then removes the file.

Invariants: the file is empty unless the worker died of a fatal signal; it is removed when
its worker is reaped, whatever the cause; a dump larger than ``MAX_DUMP`` is cut.
"""

from __future__ import annotations

import faulthandler
from pathlib import Path
from typing import IO, Final

MAX_DUMP: Final = 64 * 1024


def stack_path(runtime_dir: Path, pid: int) -> Path:
    return runtime_dir / f"stack.{pid}"


def enable(path: Path) -> IO[str]:
    """Send this process's fatal-signal stack dumps to ``path``. Keep the returned file
    open for the life of the process (faulthandler writes to its descriptor)."""
    handle = open(path, "w")  # noqa: SIM115 - lives as long as the process
    faulthandler.enable(file=handle, all_threads=True)
    return handle


def collect(path: Path) -> str:
    """The dump a dead worker left (``""`` if none), and the file removed."""
    try:
        with open(path, errors="replace") as handle:
            text = handle.read(MAX_DUMP + 1)
    except FileNotFoundError:
        return ""
    finally:
        path.unlink(missing_ok=True)
    if len(text) > MAX_DUMP:
        text = text[:MAX_DUMP] + "\n[dump cut at 64 KiB]"
    return text.strip()
