"""``tykworker status``: read the scoreboard of a running server and render it.

Read-only: maps the scoreboard without write access, so it can run as any user who can
read the runtime directory, as often as wanted, without disturbing the server. Counters
(calls, timeouts, crashes, overloads, plugin errors) are the front's since it started;
restarts and reloads are the supervisor's since the server started.
"""

from __future__ import annotations

import dataclasses
import json
import os
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
    if not _alive(header.supervisor_pid):
        raise ConfigError(
            f"no running tykworker found for {settings.socket} (the scoreboard at {path} is"
            f" from supervisor pid {header.supervisor_pid}, which is gone)"
        )
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
        f"{'PID':>8} {'GEN':>4} {'STATE':<9} {'CALLS':>8} {'RSS MiB':>8}  CURRENT",
    ]
    for s in slots:
        current = f"{s.hook} for {now - s.started_at:.3f}s" if s.started_at else ""
        lines.append(
            f"{s.pid:>8} {s.generation:>4} {s.state.name.lower():<9} {s.calls:>8} "
            f"{s.rss / 1048576:>8.1f}  {current}"
        )
    return "\n".join(lines)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0; EPERM means it exists but is not ours)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
