"""``serve --reload`` (development): notice saved changes in the plugin folders and ask for
a rolling reload, as ``SIGHUP`` does.

Polling, not inotify: every ``interval`` seconds the supervisor lists the files under the
middleware, event handler and bundle folders (``snapshot``: path -> (mtime_ns, size,
inode); ``__pycache__``, dot files and editors' swap files skipped) and compares. Debounced:
a change is reported once the folders have stayed unchanged for ``quiet`` seconds, so an
editor's save (or ``git checkout`` of many files) rolls one reload, not one per file.

What a reload does with new code is the reload's business (supervisor/pool.py): a new
generation that fails to import is logged by its workers with file and line, the serving
generation keeps serving, and nothing is retried until the next change: no crash loop.

Pure except ``snapshot`` (``os.scandir``/``stat``, bounded by ``MAX_FILES``). Runs in the
supervisor and never imports plugin code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from tykworker.config import Settings

log = logging.getLogger("tykworker.supervisor")

#: Files listed per poll at most (a huge tree would make every poll slow).
MAX_FILES: Final = 20_000
_SKIPPED_DIRS: Final = frozenset({"__pycache__", ".git", ".mypy_cache", ".pytest_cache"})
_SKIPPED_SUFFIXES: Final = (".pyc", ".swp", ".swx", ".tmp", "~")

Snapshot = dict[str, tuple[int, int, int]]


def snapshot(roots: Iterable[Path], limit: int = MAX_FILES) -> Snapshot:
    """Every file under ``roots`` that a save would touch: path -> (mtime_ns, size, inode).
    Missing roots have no files; at most ``limit`` files."""
    found: Snapshot = {}
    stack = [str(root) for root in roots]
    while stack and len(found) < limit:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith(".") or name in _SKIPPED_DIRS:
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif not name.endswith(_SKIPPED_SUFFIXES):
                            info = entry.stat()
                            found[entry.path] = (info.st_mtime_ns, info.st_size, info.st_ino)
                    except OSError:
                        continue  # removed while listing: the next poll sees it
        except OSError:
            continue
    return found


def changed_paths(before: Snapshot, after: Snapshot) -> list[str]:
    """Paths added, removed or modified between two snapshots, sorted."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


class Watcher:
    """Decides when saved changes call for a reload. Feed it the clock: ``poll(now)``."""

    def __init__(self, roots: Sequence[Path], interval: float = 0.5, quiet: float = 0.4) -> None:
        self.roots = list(roots)
        self.interval = interval
        self.quiet = quiet
        self._last = snapshot(self.roots)
        self._next_poll = 0.0
        self._changed_at: float | None = None
        self._changes: list[str] = []

    @classmethod
    def for_settings(cls, settings: Settings) -> Watcher | None:
        """A watcher of the settings' plugin folders, ``None`` unless ``reload`` is on."""
        if not settings.reload:
            return None
        return cls(watched_folders(settings))

    def retarget(self, roots: Sequence[Path]) -> None:
        """Watch other folders from now on (a reload changed the settings)."""
        if list(roots) != self.roots:
            self.roots = list(roots)
            self._last = snapshot(self.roots)
            self._changed_at = None

    def wait_time(self, now: float) -> float:
        """Seconds until ``poll`` has something to do."""
        return max(0.0, self._next_poll - now)

    def poll(self, now: float) -> list[str]:
        """The files changed since the last reload once they have been quiet for
        ``quiet`` seconds (reported once), else ``[]``. Cheap between polls."""
        if now < self._next_poll:
            return []
        self._next_poll = now + self.interval
        current = snapshot(self.roots)
        changes = changed_paths(self._last, current)
        if changes:
            self._last = current
            self._changed_at = now
            self._changes = sorted({*self._changes, *changes})
            return []
        if self._changed_at is None or now - self._changed_at < self.quiet:
            return []
        self._changed_at = None
        done, self._changes = self._changes, []
        return done


def watched_folders(settings: Settings) -> list[Path]:
    folders = [Path(settings.middleware), Path(settings.event_handlers)]
    if settings.bundles:
        folders.append(Path(settings.bundles))
    return [folder.absolute() for folder in folders]
