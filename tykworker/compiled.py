"""Which of tykworker's hot modules run compiled (mypyc) in this process.

The per-call path of the front (HTTP/2, routing, the bridge) and of the worker loop is
plain, strictly typed Python; ``scripts/compile`` (in the source tree, for the running
interpreter) or ``TYKWORKER_COMPILE=1 pip install .`` (setup.py) compiles the modules in
``MODULES`` with mypyc into C extensions that sit next to their sources. Python imports
such an extension in place of the ``.py``; without one the source runs as it is, with the
same behaviour, only slower (BENCHMARKS.md measures both).

Invariant: this module imports nothing of tykworker, so that setup.py and
``scripts/compile`` can read ``MODULES`` without importing the package.
"""

from __future__ import annotations

import importlib.machinery
from pathlib import Path
from typing import Final

#: Compiled by mypyc, in this order (dotted names). Not here: modules whose dataclasses
#: mypyc builds differently (wire/control.py), the plugin-facing modules, and anything
#: off the per-call path.
MODULES: Final = (
    "tykworker.wire.frames",
    "tykworker.wire.scoreboard",
    "tykworker.front.h2.frames",
    "tykworker.front.h2.heads",
    "tykworker.front.h2.state",
    "tykworker.front.h2.streams",
    "tykworker.front.h2.conn",
    "tykworker.front.router",
    "tykworker.front.core",
    "tykworker.front.native",
    "tykworker.worker.dispatch",
    "tykworker.worker.loop",
)
#: The shared library mypyc puts the compiled code of all ``MODULES`` in.
GROUP: Final = "tykworker._native"

_ROOT: Final = Path(__file__).resolve().parent.parent


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
    their source (Python's path finder tries extensions before sources). Imports nothing."""
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


def describe() -> str:
    """One line for logs and ``--version``: what runs compiled."""
    names = loaded()
    if not names:
        return "pure Python (no compiled modules; see scripts/compile)"
    if len(names) == len(MODULES):
        return f"{len(names)} hot modules compiled (mypyc)"
    return f"{len(names)} of {len(MODULES)} hot modules compiled (mypyc): {', '.join(names)}"
