"""pytest plugin of ``tykworker.testing``: the ``tyk_hooks`` and ``tykworker_server``
fixtures, and the ``--tyk-middleware``/``--tyk-event-handlers``/``--tyk-bundles`` options.

Registered through the ``pytest11`` entry point named ``tykworker.testing.pytest_plugin``
(so ``pip install tykworker`` is enough); ``-p tykworker.testing.pytest_plugin`` loads it
where the package is not installed, and both together register it once (the entry point's
name is the module's). Folders default to ``./middleware`` and ``./event_handlers`` of the
directory pytest runs from (its ``rootdir``); no bundles. Importing this module costs
nothing: plugins are loaded by the fixtures, per test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tykworker.testing.runner import HookRunner
    from tykworker.testing.server import TykworkerServer


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tykworker", "tykworker plugin test kit")
    group.addoption(
        "--tyk-middleware",
        metavar="DIR",
        default=None,
        help="middleware folder for tyk_hooks/tykworker_server (default ./middleware)",
    )
    group.addoption(
        "--tyk-event-handlers",
        metavar="DIR",
        default=None,
        help="event handler folder for tyk_hooks/tykworker_server (default ./event_handlers)",
    )
    group.addoption(
        "--tyk-bundles",
        metavar="DIR",
        default=None,
        help="folder of unpacked bundles for tyk_hooks/tykworker_server (default none)",
    )


def plugin_folders(config: pytest.Config) -> tuple[Path, Path, Path | None]:
    """``(middleware, event_handlers, bundles)`` from the options, relative to the
    invocation directory (where ``pytest`` was started)."""
    base = Path(config.invocation_params.dir)

    def folder(option: str, default: str | None) -> Path | None:
        value = config.getoption(option, default=None) or default
        return None if value is None else base / value

    middleware = folder("--tyk-middleware", "middleware")
    events = folder("--tyk-event-handlers", "event_handlers")
    assert middleware is not None and events is not None
    return middleware, events, folder("--tyk-bundles", None)


@pytest.fixture
def tyk_hooks(request: pytest.FixtureRequest) -> Iterator[HookRunner]:
    """A ``HookRunner`` over the plugin folders: hooks run in the test process through a
    worker's code path, with a fresh embedded store (and fresh module globals) per test."""
    from tykworker.testing.runner import HookRunner

    middleware, events, bundles = plugin_folders(request.config)
    with HookRunner(middleware, events, bundles) as runner:
        yield runner


@pytest.fixture
def tykworker_server(request: pytest.FixtureRequest) -> Iterator[TykworkerServer]:
    """A real ``tykworker serve`` (2 workers) on a temporary socket over the plugin folders;
    ``.call(hook_name, obj)`` and ``.event(name, event)`` as the gateway calls it."""
    from tykworker.testing.server import TykworkerServer

    middleware, events, bundles = plugin_folders(request.config)
    with TykworkerServer(middleware, events, bundles) as server:
        yield server
