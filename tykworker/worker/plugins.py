"""Loading plugin code and finding handlers: the ``Runtime`` a worker serves calls with.

Scopes (each one hook table, each with its own import isolation, see ``scope.py``):

* the ``middleware`` directory: every ``*.py`` file in it (sorted, ``_*`` skipped) is an
  entry module; objects without a usable bundle are served from here;
* the ``event_handlers`` directory: same rules, for ``@Event`` handlers only. A ``@Hook``
  there could never be called (Dispatch looks in middleware and bundles), so it is a
  ``PluginLoadError`` naming the file and line, not a hook counted at start and answered
  ``no_hook`` later;
* each bundle under ``bundles``: a directory holding ``manifest.json``. Its key is its
  name when that is 32 hex digits (already named by the hash, as the gateway unpacks
  them), else ``md5(name)`` (and ``md5(name + ".zip")``), matching ``spec["bundle_hash"]``.
  A directory without ``manifest.json`` whose subfolders have one is a merged bundle
  (the gateway's layout for ``"a.zip,b.zip"``): each part loads in its own scope and
  their hooks form one table.
  Entry module (as ``TykMiddleware.__init__`` in the gateway's
  ``coprocess/python/tyk/middleware.py`` picks it): the single file of ``file_list`` when
  it has exactly one entry, else ``middleware.py``. A bundle with no Python entry (a
  gRPC-only bundle whose manifest only carries ``custom_middleware``) has no hooks.

Registration: every handler created while a scope's files execute (decorators record
themselves) joins that scope's table under its function name. Two handlers with one name
in one scope are a ``PluginLoadError`` naming both places, never a silent override.

Lookup of a Dispatch call: the bundle named by ``spec["bundle_hash"]`` if it is loaded and
has hooks (strict: a missing name there is "hook not found"), else the middleware table.
Bundles that appear after start are loaded on first use (the bundles directory is
re-listed when its mtime changes). An empty hook name is never matched to a handler
(``dispatch`` refuses an auth call with one before lookup, with 403).

Lifecycle hooks (``@OnStart``/``@OnStop``) of every scope loaded at start are kept in
load order (``Runtime.lifecycle``); the worker runs them (worker/lifecycle.py). A bundle
loaded later has its lifecycle hooks ignored, with a warning.

Async hooks: ``Runtime.async_hooks()`` names the Dispatch hooks of the scopes loaded so far
whose handler is an ``async def`` (the worker announces them to the front); Dispatch runs
them as ``dispatch.Pending`` replies. ``trigger_event`` of an async ``@Event`` handler
starts it as a task of the worker's loop (``Runtime.spawn``) and returns at once.

Invariants: ``load_runtime`` imports every scope that exists at start and raises
``PluginLoadError`` (file, line, traceback) if any fails, so a bad reload never replaces
good workers. Each handler runs with its own scope active.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import traceback
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.config import Settings
from tykworker.errors import HookNotFound, PluginLoadError
from tykworker.store import Store, StoreThreads, open_store
from tykworker.worker import tyk as shims
from tykworker.worker.capture import Capture
from tykworker.worker.dispatch import (
    Pending,
    Target,
    dispatch,
    dispatch_event,
    run_event,
    run_event_async,
    start_dispatch,
    start_event,
)
from tykworker.worker.scope import Scope, install_finder
from tykworker.worker.tyk import gateway as gateway_api
from tykworker.worker.tyk.decorators import HandlerDecorator, collecting
from tykworker.worker.tyk.event import TykEvent

log = logging.getLogger("tykworker.plugins")

#: ``spec["bundle_hash"]`` of an API without a bundle: md5("").
NO_BUNDLE: Final = hashlib.md5(b"").hexdigest()
_HASH_NAME: Final = re.compile(r"^[0-9a-f]{32}$")
#: ``trigger_event`` handlers may trigger events themselves, up to this depth.
MAX_EVENT_DEPTH: Final = 8


@dataclass
class Registry:
    """The handlers of one scope, by name."""

    label: str
    scope: Scope | None = None
    hooks: dict[str, HandlerDecorator] = field(default_factory=dict)
    events: dict[str, HandlerDecorator] = field(default_factory=dict)
    #: Per-handler scopes of a merged bundle (each part has its own); else ``scope``.
    scopes: dict[int, Scope] = field(default_factory=dict)
    #: ``@OnStart``/``@OnStop`` handlers, in definition order.
    lifecycle: list[HandlerDecorator] = field(default_factory=list)

    def scope_of(self, handler: HandlerDecorator) -> Scope | None:
        return self.scopes.get(id(handler), self.scope)

    def hook(self, name: str, hook_type: int) -> HandlerDecorator:
        """The hook called ``name``; raises ``HookNotFound``."""
        handler = self.hooks.get(name) if name else None  # an empty name is never guessed
        if handler is None:
            shown = repr(name) if name else '"" (empty hook name)'
            raise HookNotFound(f"hook {shown} is not defined in {self.label}")
        return handler


def build_registry(
    label: str,
    scope: Scope | None,
    handlers: Iterable[HandlerDecorator],
    events_only: bool = False,
) -> Registry:
    """Index ``handlers`` by name; raise ``PluginLoadError`` on a duplicate name, and with
    ``events_only`` on any ``@Hook`` (no Dispatch call can reach it)."""
    registry = Registry(label, scope)
    seen: dict[str, HandlerDecorator] = {}
    for handler in handlers:
        if events_only and not handler.is_event and not handler.is_lifecycle:
            raise PluginLoadError(
                f"{handler.filename}:{handler.lineno}: @Hook {handler.name} in {label}, which "
                "holds @Event handlers only: hooks are served from the middleware directory "
                "or a bundle; move it there"
            )
        if handler.is_lifecycle:
            registry.lifecycle.append(handler)
            continue
        first = seen.setdefault(handler.name, handler)
        if first is not handler:
            raise PluginLoadError(
                f"{handler.filename}:{handler.lineno}: duplicate hook name {handler.name!r} "
                f"in {label} (first defined at {first.filename}:{first.lineno})"
            )
        table = registry.events if handler.is_event else registry.hooks
        table[handler.name] = handler
        if not handler.is_event and handler.arg_count not in (3, 4, 5):
            log.warning(
                "%s:%d: hook %s takes %d positional arguments; hooks take 3, 4 or 5 "
                "(calls will be answered as plugin errors)",
                handler.filename,
                handler.lineno,
                handler.name,
                handler.arg_count,
                extra={"hook": handler.name},
            )
    return registry


def describe_import_error(exc: BaseException, root: Path) -> str:
    """``file:line: Type: message`` of the plugin line at fault, then the traceback."""
    where = "?"
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{exc.filename}:{exc.lineno}"
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        inside = [f for f in frames if Path(f.filename).is_relative_to(root)]
        if inside or frames:
            frame = (inside or frames)[-1]
            where = f"{frame.filename}:{frame.lineno}"
    text = "".join(traceback.format_exception(exc)).rstrip()
    return f"{where}: {type(exc).__name__}: {exc}\n{text}"


def load_scope(
    label: str, root: Path, entries: Iterable[Path], events_only: bool = False
) -> Registry:
    """Execute ``entries`` in a new scope rooted at ``root``; return its table (see
    ``build_registry`` for ``events_only``). The log line counts what calls can reach."""
    scope = Scope(label, root)
    with collecting() as handlers, scope.active():
        for path in entries:
            try:
                scope.load_file(path)
            except Exception as exc:
                raise PluginLoadError(
                    f"{label}: cannot import {path}: {describe_import_error(exc, root)}"
                ) from exc
    registry = build_registry(label, scope, handlers, events_only)
    if events_only:
        log.info("loaded %s: %d event handlers", label, len(registry.events))
    else:
        log.info(
            "loaded %s: %d hooks, %d event handlers",
            label,
            len(registry.hooks),
            len(registry.events),
        )
    return registry


def load_directory(label: str, directory: Path, events_only: bool = False) -> Registry:
    """Every ``*.py`` file of ``directory`` (none if it does not exist)."""
    if not directory.is_dir():
        log.warning("%s directory %s does not exist: no handlers", label, directory)
        return Registry(label)
    entries = sorted(p for p in directory.glob("*.py") if not p.name.startswith(("_", ".")))
    return load_scope(f"{label} directory {directory}", directory.resolve(), entries, events_only)


def bundle_entry(bundle: Path) -> Path | None:
    """The entry module of a bundle (rule in the module docstring), ``None`` for a
    code-less bundle."""
    manifest_path = bundle / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PluginLoadError(f"{manifest_path}: unreadable manifest: {exc}") from exc
    file_list = manifest.get("file_list") if isinstance(manifest, dict) else None
    if not isinstance(file_list, list):
        file_list = []
    if len(file_list) == 1 and str(file_list[0]).endswith(".py"):
        entry = bundle / str(file_list[0])
    else:
        entry = bundle / "middleware.py"
    if entry.is_file():
        return entry
    if any(str(name).endswith(".py") for name in file_list):
        raise PluginLoadError(f"{bundle}: no entry module (expected {entry.name})")
    return None


def bundle_parts(bundle: Path) -> list[Path]:
    """The parts of a merged bundle (``"a.zip,b.zip"``: the gateway unpacks each into its
    own subfolder of one root, which has no manifest of its own); ``[]`` otherwise."""
    if (bundle / "manifest.json").is_file():
        return []
    return sorted(p for p in bundle.iterdir() if (p / "manifest.json").is_file())


def merge_registries(label: str, parts: list[Registry]) -> Registry:
    """One table over several parts; each handler keeps its part's scope. A name defined
    by two parts is a ``PluginLoadError``."""
    merged = Registry(label)
    for part in parts:
        for table, into in ((part.hooks, merged.hooks), (part.events, merged.events)):
            for name, handler in table.items():
                if name in into:
                    raise PluginLoadError(f"{label}: {name!r} is defined by two bundle parts")
                into[name] = handler
                if part.scope is not None:
                    merged.scopes[id(handler)] = part.scope
        for handler in part.lifecycle:
            merged.lifecycle.append(handler)
            if part.scope is not None:
                merged.scopes[id(handler)] = part.scope
    return merged


def load_bundle(bundle: Path) -> Registry:
    label = f"bundle {bundle.name}"
    parts = bundle_parts(bundle)
    if parts:
        return merge_registries(label, [load_bundle(part) for part in parts])
    entry = bundle_entry(bundle)
    if entry is None:
        return Registry(label)
    return load_scope(label, bundle.resolve(), [entry])


def bundle_keys(name: str) -> tuple[str, ...]:
    """The ``spec["bundle_hash"]`` values that select a bundle directory called ``name``."""
    if _HASH_NAME.match(name):
        return (name,)
    return tuple(hashlib.md5(n.encode()).hexdigest() for n in (name, name + ".zip"))


def _is_bundle(path: Path) -> bool:
    """A folder holding a bundle (its manifest, or the parts of a merged one). A folder
    this process may not read counts as one, so that its calls get a clear error."""
    try:
        return path.is_dir() and ((path / "manifest.json").is_file() or bool(bundle_parts(path)))
    except PermissionError:
        return True


class BundleSet:
    """The bundles directory: eager load at start, lazy load of bundles unpacked later."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._paths: dict[str, Path] = {}
        self._loaded: dict[str, Registry | PluginLoadError] = {}
        self._mtime: float | None = None
        self._pending = False
        self.started = False  # the worker serves: lifecycle hooks of new bundles are ignored

    def _rescan(self, bundle_hash: str = "") -> None:
        # Cheap on the hot path: re-list only when the directory changed or a bundle was
        # seen half-unpacked (its manifest appears without touching the parent's mtime).
        if self.root is None:
            return
        direct = self.root / bundle_hash
        if bundle_hash and _is_bundle(direct):
            self._paths[bundle_hash] = direct
            return
        try:
            mtime = self.root.stat().st_mtime
        except OSError:
            return
        if mtime == self._mtime and not self._pending:
            return
        self._mtime = mtime
        self._pending = False
        for path in sorted(self.root.iterdir()):
            if _is_bundle(path):
                for key in bundle_keys(path.name):
                    self._paths.setdefault(key, path)
            elif path.is_dir():
                self._pending = True

    def load_all(self) -> None:
        """Import every bundle present now; raise the first ``PluginLoadError``."""
        self._rescan()
        for key in sorted(self._paths):
            self.get(key)

    def get(self, bundle_hash: str) -> Registry | None:
        """The bundle for ``bundle_hash`` (``None`` if absent); raises ``PluginLoadError``
        if its code cannot be imported (remembered until the directory changes)."""
        if bundle_hash not in self._paths:
            self._rescan(bundle_hash)
        path = self._paths.get(bundle_hash)
        if path is None:
            return None
        if bundle_hash not in self._loaded:
            try:
                result: Registry | PluginLoadError = load_bundle(path)
            except PluginLoadError as exc:
                result = exc
            except OSError as exc:  # not ours to read: unpacked 0700 by another user
                result = PluginLoadError(
                    f"bundle {path}: cannot read it as uid {os.getuid()} ({exc.strerror}):"
                    " the gateway unpacks bundles mode 0700 as its own user; run the workers"
                    " as that user (--user)"
                )
            for key in bundle_keys(path.name):
                self._loaded[key] = result
            if self.started and isinstance(result, Registry) and result.lifecycle:
                log.warning(
                    "bundle %s loaded after start: its @OnStart/@OnStop hooks do not run",
                    path.name,
                )
        result = self._loaded[bundle_hash]
        if isinstance(result, PluginLoadError):
            raise result
        return result

    def loaded(self) -> list[Registry]:
        unique = {id(r): r for r in self._loaded.values() if isinstance(r, Registry)}
        return list(unique.values())


class Runtime:
    """Everything a worker needs to answer calls. See the module docstring for lookup."""

    def __init__(
        self,
        middleware: Registry,
        event_handlers: Registry,
        bundles: BundleSet,
        store: Store,
        store_threads: StoreThreads | None = None,
    ) -> None:
        self.middleware = middleware
        self.event_handlers = event_handlers
        self.bundles = bundles
        self.store = store
        #: The store for async hooks (``None``: they call ``store`` directly).
        self.store_threads = store_threads
        # APIID -> bundle, learned from Dispatch calls: events carry no bundle_hash.
        self._api_bundles: dict[str, Registry] = {}
        self._event_depth = 0
        #: ``serve --capture``: records each call before it runs; ``None`` when off.
        self.capture: Capture | None = None
        #: Starts a coroutine as a task of the worker's loop (set by the worker).
        self.spawn: Callable[[Coroutine[Any, Any, None]], None] | None = None
        #: Lifecycle hooks of the scopes loaded at start, with their scopes.
        self.lifecycle: list[Target] = []

    def dispatch(self, payload: bytes | bytearray) -> bytes:
        """``coprocess.Object`` bytes -> reply Object bytes. Never raises."""
        if self.capture is not None and not self.capture.record(payload):
            self.capture = None
        return dispatch(payload, self._resolve)

    def dispatch_event(self, payload: bytes | bytearray) -> bytes:
        """``coprocess.Event`` bytes -> ``EventReply`` bytes (empty). Never raises."""
        return dispatch_event(payload, self._resolve_event)

    def start_dispatch(self, payload: bytes | bytearray) -> bytes | Pending:
        """``dispatch``; an async hook's reply is ``Pending`` (the worker's loop runs it)."""
        if self.capture is not None and not self.capture.record(payload):
            self.capture = None
        return start_dispatch(payload, self._resolve)

    def start_event(self, payload: bytes | bytearray) -> bytes | Pending:
        """``dispatch_event``; an async handler's reply is ``Pending``."""
        return start_event(payload, self._resolve_event)

    def registries(self) -> list[Registry]:
        """Every scope's table loaded so far."""
        return [self.middleware, self.event_handlers, *self.bundles.loaded()]

    def async_hooks(self) -> tuple[str, ...]:
        """Names of the Dispatch hooks loaded so far whose handler is an ``async def``."""
        names = {h.name for r in self.registries() for h in r.hooks.values() if h.is_async}
        return tuple(sorted(names))

    def collect_lifecycle(self) -> None:
        """Note the lifecycle hooks of every scope loaded now (at start)."""
        self.lifecycle = [(h, r.scope_of(h)) for r in self.registries() for h in r.lifecycle]
        self.bundles.started = True

    def activate(self) -> None:
        """Point the gateway API (``store_data``, ``trigger_event``) at this runtime (a
        worker has one runtime; an in-process test may hold several)."""
        gateway_api.bind(self.store, self.trigger_event, self.store_threads)

    def close(self) -> None:
        """Release store connections; the gateway API stops using this runtime."""
        gateway_api.bind(None, None)
        self.store.close()
        if self.store_threads is not None:
            self.store_threads.close()

    def _resolve(self, obj: object_pb2.Object) -> Target:
        registry = self.middleware
        bundle_hash = obj.spec.get("bundle_hash", "")
        if bundle_hash and bundle_hash != NO_BUNDLE:
            bundle = self.bundles.get(bundle_hash)
            if bundle is not None and bundle.hooks:
                registry = bundle
                self._api_bundles[obj.spec.get("APIID", "")] = bundle
        handler = registry.hook(obj.hook_name, obj.hook_type)
        return handler, registry.scope_of(handler)

    def _resolve_event(self, name: str, api_id: str) -> Target | None:
        chain = [self.event_handlers, self.middleware]
        bundle = self._api_bundles.get(api_id)
        if bundle is not None:
            chain.insert(0, bundle)
        for registry in chain:
            if name in registry.events:
                handler = registry.events[name]
                return handler, registry.scope_of(handler)
        owners = [r for r in self.bundles.loaded() if name in r.events]
        if len(owners) == 1:
            handler = owners[0].events[name]
            return handler, owners[0].scope_of(handler)
        return None

    def trigger_event(self, name: str, payload: str) -> int:
        """Run the local ``@Event`` handler called ``name``; return how many ran (0/1)."""
        context = gateway_api.current()
        target = self._resolve_event(name, context.api_id)
        if target is None or self._event_depth >= MAX_EVENT_DEPTH:
            return 0
        event = TykEvent(
            {
                "message": {
                    "Type": name,
                    "Meta": {"Message": payload, "OriginatingRequest": ""},
                    "TimeStamp": _timestamp(),
                },
                "handler_name": name,
                "spec": {"APIID": context.api_id, "OrgID": context.spec.get("OrgID", "")},
            }
        )
        if target[0].is_async:
            if self.spawn is None:
                log.warning("trigger_event: async handler %s needs a worker", name)
                return 0
            self.spawn(run_event_async(target, event))
            return 1
        self._event_depth += 1
        try:
            run_event(target, event)
        finally:
            self._event_depth -= 1
        return 1


def _timestamp() -> str:
    return str(datetime.datetime.now().astimezone())


def load_runtime(settings: Settings) -> Runtime:
    """Import all plugins the settings name and return a ready ``Runtime``.

    Raises ``PluginLoadError`` (file, line and traceback in the message) if any plugin
    fails to import or a scope defines one hook name twice.
    """
    shims.install()
    install_finder()
    runtime_dir, redis_url = settings.resolved_runtime_dir(), settings.redis_url
    store = open_store(runtime_dir, redis_url)
    threads = StoreThreads(lambda: open_store(runtime_dir, redis_url))
    bundles = BundleSet(Path(settings.bundles) if settings.bundles else None)
    # Bound before any import: plugins may call the gateway API at import time.
    runtime = Runtime(Registry("middleware"), Registry("event_handlers"), bundles, store, threads)
    runtime.activate()
    try:
        runtime.middleware = load_directory("middleware", Path(settings.middleware))
        runtime.event_handlers = load_directory(
            "event_handlers", Path(settings.event_handlers), events_only=True
        )
        bundles.load_all()
    except BaseException:
        runtime.close()
        raise
    runtime.collect_lifecycle()
    runtime.capture = Capture.from_settings(settings)
    return runtime
