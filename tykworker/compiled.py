"""Which of tykworker's hot modules run compiled (mypyc) in this process.

The front's per-call path (HTTP/2, routing, the bridge) is plain, strictly typed Python;
``scripts/compile`` (in the source tree, for the running interpreter) or
``TYKWORKER_COMPILE=1 pip install .`` (setup.py) compiles the modules in ``MODULES`` with
mypyc into C extensions that sit next to their sources. Python imports
such an extension in place of the ``.py``; without one the source runs as it is, with the
same behaviour, only slower (BENCHMARKS.md measures both).

A class these modules make per call is ``@dataclass(slots=True, init=False)`` with its
``__init__`` written out (and not frozen): mypyc compiles a class's own methods, but the
``__init__`` that ``dataclasses`` generates at import runs interpreted, ~0.4-0.6 µs per
object (frozen: ``object.__setattr__`` per field) against ~0.05 µs native.

``TYKWORKER_PURE=1`` in the environment runs the sources even where extensions are built
(tykworker/__init__.py calls ``run_sources`` before any hot module is imported): to compare
the two builds in one run (bench/gateway.py ``tykworker-pure``) or to rule the compiled one
out. It holds for the process and its children (the supervisor's front and workers).

Invariant: this module imports nothing of tykworker, so that setup.py and
``scripts/compile`` can read ``MODULES`` without importing the package.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Final

#: Compiled by mypyc, in this order (dotted names): the front's per-call path and the
#: worker's loop, dispatch, reply journal and import scopes (journal and scope since stop
#: 34: the workers' CPU per call 27.3 -> 24.8 µs, BENCHMARKS.md). Not here: modules whose
#: dataclasses mypyc builds differently (wire/control.py); the plugin-facing ``tyk.*``
#: shims (plugins may subclass or patch them); worker/plugins.py (no gain measured);
#: logs.py (it builds, but the real-server A/B showed no gain: workers 27.6 against 27.8 µs
#: per call); anything off the per-call path. (The worker modules were held out
#: until stop 28: compiled, a 1 MiB call faulted in ~1,500 fresh pages per call against
#: ~1,000 from source; system/heap.py now keeps those pages for reuse in both builds.)
MODULES: Final = (
    "tykworker.wire.frames",
    "tykworker.wire.scoreboard",
    "tykworker.wire.journal",
    "tykworker.front.h2.frames",
    "tykworker.front.h2.heads",
    "tykworker.front.h2.state",
    "tykworker.front.h2.streams",
    "tykworker.front.h2.conn",
    "tykworker.front.router",
    "tykworker.front.deadlines",
    "tykworker.front.core",
    "tykworker.front.native",
    "tykworker.worker.loop",
    "tykworker.worker.dispatch",
    "tykworker.worker.scope",
)
#: The shared library mypyc puts the compiled code of all ``MODULES`` in.
GROUP: Final = "tykworker._native"
#: Set to ``1``: the sources run, whatever is built (``run_sources``).
PURE_VARIABLE: Final = "TYKWORKER_PURE"

_ROOT: Final = Path(__file__).resolve().parent.parent
_sources_only = False


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the ``MODULES`` as their ``.py`` files, ahead of the path finder (which
    prefers an extension next to a source)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in MODULES:
            return importlib.util.spec_from_file_location(fullname, source(fullname))
        return None


def run_sources() -> None:
    """From now on this process imports the ``MODULES`` from their sources (call it
    before any of them is imported: one imported already stays as it is)."""
    global _sources_only
    if not _sources_only:
        _sources_only = True
        sys.meta_path.insert(0, _SourceFinder())


def source(module: str) -> Path:
    """The ``.py`` file of ``module`` (one of ``MODULES``)."""
    return _ROOT.joinpath(*module.split(".")).with_suffix(".py")


def extension(module: str) -> Path | None:
    """The C extension of ``module`` for this interpreter, if one is built."""
    base = source(module).with_suffix("")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.exists():
            return candidate
    return None


def loaded() -> list[str]:
    """The ``MODULES`` this process imports compiled: those with an extension next to
    their source (Python's path finder tries extensions before sources), none after
    ``run_sources``. Imports nothing."""
    if _sources_only:
        return []
    return [module for module in MODULES if extension(module) is not None]


def stale() -> list[str]:
    """Compiled ``MODULES`` whose source changed after they were built: the extension,
    not the edited source, would run (rebuild with ``scripts/compile``, or remove them
    with ``scripts/compile --clean``)."""
    out = []
    for module in MODULES:
        built = extension(module)
        if built is not None and source(module).stat().st_mtime > built.stat().st_mtime:
            out.append(module)
    return out


def extensions(target_dir: str = "build") -> list[Any]:
    """The setuptools extensions of ``MODULES`` (mypyc's ``mypycify``, run from the source
    tree's root): what setup.py and ``scripts/compile`` both build."""
    from mypyc.build import mypycify

    paths = [str(source(m).relative_to(_ROOT)) for m in MODULES]
    return list(mypycify(paths, opt_level="3", group_name=GROUP, target_dir=target_dir))


def describe() -> str:
    """One line for logs and ``--version``: what runs compiled."""
    if _sources_only:
        return f"pure Python ({PURE_VARIABLE}=1)"
    names = loaded()
    if not names:
        return "pure Python (no compiled modules; see scripts/compile)"
    if len(names) == len(MODULES):
        return f"{len(names)} hot modules compiled (mypyc)"
    return f"{len(names)} of {len(MODULES)} hot modules compiled (mypyc): {', '.join(names)}"
