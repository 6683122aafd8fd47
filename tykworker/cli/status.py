"""``tykworker status``: read the scoreboard of a running server and render it.

Read-only: maps the scoreboard without write access, so it can run as any user who can
read the runtime directory, as often as wanted, without disturbing the server. Counters
(calls, timeouts, crashes, overloads, plugin errors) are the front's since it started;
restarts and reloads are the supervisor's since the server started.

Trust: the header is written by the supervisor and the front only (workers, which run
plugin code, map nothing but their own slot, wire/scoreboard.py); the supervisor pid is
checked to be this server's supervisor (``supervisor_problem``), and a slot is shown only
if its pid is a child of that supervisor, so a plugin can at most misreport its own
worker's line.
"""

from __future__ import annotations

import dataclasses
import json
import time

from tykworker.config import Settings
from tykworker.errors import ConfigError
from tykworker.wire.scoreboard import Scoreboard


def render_status(settings: Settings, as_json: bool = False) -> str:
    path = settings.resolved_runtime_dir() / "scoreboard"
    try:
        board = Scoreboard.open(path, writable=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"no scoreboard at {path}: is tykworker running?") from exc
    try:
        header, slots = board.header(), board.slots()
    finally:
        board.close()
    problem = supervisor_problem(settings, header.supervisor_pid)
    if problem is not None:
        raise ConfigError(
            f"no running tykworker found for {settings.socket} (the scoreboard at {path} is"
            f" from supervisor pid {header.supervisor_pid}: {problem})"
        )
    slots = [s for s in slots if _parent_of(s.pid) == header.supervisor_pid]
    if as_json:
        doc = {
            "server": dataclasses.asdict(header),
            "workers": [dict(dataclasses.asdict(s), state=s.state.name.lower()) for s in slots],
        }
        return json.dumps(doc, indent=2)
    now = time.time()
    lines = [
        f"supervisor pid {header.supervisor_pid}, front pid {header.front_pid}, "
        f"generation {header.generation}, {'DEGRADED' if header.degraded else 'ok'}",
        f"workers target {header.target_workers}; queue {header.queue_depth}; calls "
        f"{header.calls}; timeouts {header.timeouts}; crashes {header.crashes}; "
        f"overloads {header.overloads}; plugin errors {header.errors}; "
        f"restarts {header.restarts}; import failures {header.import_failures}; "
        f"reloads {header.reloads} ({header.reload_failures} failed)",
        f"{'PID':>8} {'GEN':>4} {'STATE':<9} {'CALLS':>8} {'IN FLIGHT':>9} {'RSS MiB':>8}"
        "  CURRENT (oldest)",
    ]
    for s in slots:
        current = f"{s.hook} for {now - s.started_at:.3f}s" if s.started_at else ""
        lines.append(
            f"{s.pid:>8} {s.generation:>4} {s.state.name.lower():<9} {s.calls:>8} "
            f"{s.in_flight:>9} {s.rss / 1048576:>8.1f}  {current}"
        )
    return "\n".join(lines)


def supervisor_problem(settings: Settings, pid: int) -> str | None:
    """Why ``pid`` is not this server's supervisor, or None if it is: its process title
    names this socket, it runs as the owner of the runtime directory, and no process above
    it has that title too (plugin code can write the pid file and give a process of its own
    the supervisor's title, but that process descends from the real supervisor)."""
    import psutil

    if pid <= 0:
        return "no pid"
    expected = f"tykworker: supervisor {settings.socket}"
    try:
        proc = psutil.Process(pid)
        title = " ".join(proc.cmdline()).strip()
        uid = proc.uids().real
        above = [" ".join(p.cmdline()).strip() for p in proc.parents()]
        owner = settings.resolved_runtime_dir().stat().st_uid
    except psutil.NoSuchProcess:
        return "gone"
    except (psutil.Error, OSError) as exc:
        return f"not a running tykworker: {exc}"
    if title != expected or uid != owner or expected in above:
        return (
            f"not the supervisor of {settings.socket} ({title!r}, uid {uid}; the runtime"
            f" directory belongs to uid {owner})"
        )
    return None


def _parent_of(pid: int) -> int | None:
    """The parent pid of ``pid`` (None if it is gone or not ours to see)."""
    import psutil

    try:
        parent: int = psutil.Process(pid).ppid()
    except (psutil.Error, ValueError):
        return None
    return parent
