"""Import isolation for plugin code: one ``Scope`` per bundle or plugin directory.

Plugin files import their neighbours by bare name (``import helper``), as Tyk bundles do.
Two bundles may both ship a ``helper.py``, so a bare name must mean the file of the bundle
whose code is running. Theory of operation:

* A ``Scope`` knows its directory and the bare names its files provide (``local_names``:
  ``*.py``/extension modules and packages with ``__init__.py``), minus reserved names.
* Scope code runs only inside ``with scope.active():``. Entering puts the scope's modules
  into ``sys.modules`` under their bare names (setting aside whatever was there: another
  scope's modules, or a top-level module of the same name); leaving takes them out again
  and restores what was set aside. A meta-path finder at the front of ``sys.meta_path``
  resolves imports of local names (and their submodules) to the innermost active scope's
  directory, and records every module it loads for that scope.
* Reserved names always resolve normally, whatever files a scope holds: the standard
  library, ``tyk``, ``gateway``, ``coprocess_*`` and the runtime's own dependencies. A
  plugin file with such a name can still be an entry module (loaded by path under a private
  name) but cannot be imported by its bare name.

Invariants:
* Outside ``active()``, ``sys.modules`` holds no module of any scope under a bare name.
* Inside, it holds the modules of exactly one scope, the innermost active one.
* Loading and calls are single-threaded in a worker (one call at a time), which is what
  makes swapping ``sys.modules`` entries safe. Async hooks (many calls at once on one
  event loop) are awaited through ``scoped``: their scope is active during each step of
  the coroutine and never across an ``await``, where other calls' steps run.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools
import sys
from collections.abc import Coroutine, Generator, Iterator, Sequence
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any, Final, Generic, TypeVar

T = TypeVar("T")

#: Names a plugin file can never shadow (besides the standard library and ``coprocess_*``).
RESERVED_NAMES: Final = frozenset(
    {"tyk", "gateway", "tykworker", "google", "grpc", "redis", "msgpack", "psutil"}
    | {"setproctitle", "__main__"}
)

_stack: list[Scope] = []
_ids = itertools.count(1)


def is_reserved(name: str) -> bool:
    return (
        name in RESERVED_NAMES or name in sys.stdlib_module_names or name.startswith("coprocess_")
    )


def _local_names(root: Path) -> frozenset[str]:
    names: set[str] = set()
    suffixes = tuple(importlib.machinery.all_suffixes())
    for entry in root.iterdir() if root.is_dir() else ():
        if entry.is_dir() and (entry / "__init__.py").is_file():
            names.add(entry.name)
        elif entry.is_file() and entry.name.endswith(suffixes):
            names.add(entry.name.partition(".")[0])
    return frozenset(n for n in names if n.isidentifier() and not is_reserved(n))


class Scope:
    """The modules of one bundle or plugin directory, isolated from every other scope."""

    def __init__(self, label: str, root: Path) -> None:
        self.label = label
        self.root = root
        self.local_names = _local_names(root)
        self.modules: dict[str, ModuleType] = {}
        self._loaded: set[str] = set()
        self._private_prefix = f"_tykworker_scope{next(_ids)}_"

    def spec_for(self, fullname: str, path: Sequence[str] | None) -> ModuleSpec | None:
        """Spec of a local module (``None``: not ours). Records the name as loaded."""
        head = fullname.partition(".")[0]
        if head not in self.local_names:
            return None
        search = [str(self.root)] if head == fullname else path
        spec = importlib.machinery.PathFinder.find_spec(fullname, search)
        if spec is not None:
            self._loaded.add(fullname)
        return spec

    def load_file(self, path: Path) -> ModuleType:
        """Execute ``path`` as an entry module of this scope (inside ``active()``).

        Returns the module (the existing one if a sibling already imported it). Raises
        whatever the module raises while executing.
        """
        stem = path.name.partition(".")[0]
        name = stem if stem in self.local_names else self._private_prefix + stem
        if name in self._loaded and name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}", path=str(path))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        self._loaded.add(name)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return sys.modules[name]

    @contextmanager
    def active(self) -> Iterator[Scope]:
        """Run the block with this scope's modules importable by their bare names.

        Re-entrant: entering the innermost active scope again changes nothing."""
        saved = self.enter()
        try:
            yield self
        finally:
            self.leave(saved)

    def enter(self) -> dict[str, ModuleType] | None:
        """``active``'s entry without a generator (the per-call path): pass what it
        returns to ``leave``, in a ``finally``. ``None``: it was the innermost already."""
        if _stack and _stack[-1] is self:
            return None
        saved = self._swap_in()
        _stack.append(self)
        return saved

    def leave(self, saved: dict[str, ModuleType] | None) -> None:
        """Undo ``enter``, whose result ``saved`` is."""
        if saved is not None:
            _stack.pop()
            self._swap_out(saved)

    def _swap_in(self) -> dict[str, ModuleType]:
        names = set(self.local_names) | self._loaded
        if _stack:
            names |= _stack[-1]._loaded
        saved: dict[str, ModuleType] = {}
        for name in names:
            module = sys.modules.pop(name, None)
            if module is not None:
                saved[name] = module
                if name in self.local_names and hasattr(module, "__path__"):
                    # A foreign package of the same name: hide its submodules too.
                    saved.update(_pop_children(name))
        sys.modules.update(self.modules)
        return saved

    def _swap_out(self, saved: dict[str, ModuleType]) -> None:
        for name in self._loaded:
            module = sys.modules.pop(name, None)
            if module is None:
                self.modules.pop(name, None)
            else:
                self.modules[name] = module
        sys.modules.update(saved)

    def __repr__(self) -> str:
        return f"<Scope {self.label} {self.root}>"


class scoped(Generic[T]):  # used like a function: ``await scoped(coro, scope)``
    """Await ``coro`` with ``scope`` active during each of its steps (see the module
    docstring); the coroutine's awaits, results and exceptions (cancellation included)
    pass through unchanged."""

    __slots__ = ("coro", "scope")

    def __init__(self, coro: Coroutine[Any, Any, T], scope: Scope) -> None:
        self.coro = coro
        self.scope = scope

    def __await__(self) -> Generator[Any, Any, T]:
        coro, scope = self.coro, self.scope
        value: Any = None
        error: BaseException | None = None
        while True:
            with scope.active():
                try:
                    step = coro.send(value) if error is None else coro.throw(error)
                except StopIteration as stop:
                    result: T = stop.value
                    return result
            try:
                value, error = (yield step), None
            except BaseException as exc:  # cancellation, close(): into the coroutine
                value, error = None, exc


def _pop_children(package: str) -> dict[str, ModuleType]:
    prefix = package + "."
    return {k: sys.modules.pop(k) for k in [k for k in sys.modules if k.startswith(prefix)]}


class _ScopeFinder:
    """Meta-path finder resolving local names of the innermost active scope."""

    @staticmethod
    def find_spec(
        fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not _stack:
            return None
        return _stack[-1].spec_for(fullname, path)

    @staticmethod
    def invalidate_caches() -> None:
        return None


_FINDER: Final = _ScopeFinder()


def install_finder() -> None:
    """Put the scope finder first on ``sys.meta_path`` (idempotent)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
