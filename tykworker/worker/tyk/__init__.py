"""Import shims so that Tyk plugins run unchanged inside tykworker workers.

``install()`` makes these names importable in the calling process (a worker), and only
there: they are entries in ``sys.modules``, not packages shipped in the wheel.

=========================  ==================================================
name                       provides
=========================  ==================================================
``tyk``                    package with the submodules below
``tyk.decorators``         ``tykworker.decorators`` (``Hook``, ``Pre``, ...)
``tyk.gateway``            ``tykworker.gateway_api`` (``TykGateway``)
``tyk.request``            ``TykCoProcessRequest``
``tyk.session``            ``TykSession`` and the other session messages
``tyk.object``             ``TykCoProcessObject``
``tyk.event``              ``TykEvent``
``gateway``                same as ``tyk.gateway``
``coprocess_*_pb2``        the generated protobuf modules
``decorators``, ``session``, ``request``, ``object``, ``event``
                           same as ``tyk.<name>`` (Tyk put these on sys.path too);
                           a plugin scope with its own file of that name sees its file
=========================  ==================================================

Invariant: ``install()`` is idempotent. ``tyk``, ``tyk.*``, ``gateway`` and
``coprocess_*_pb2`` always resolve to the shims afterwards; the bare names ``decorators``,
``session``, ``request``, ``object`` and ``event`` are only set when no other module holds
them.
"""

from __future__ import annotations

import importlib
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Final

from tykworker.worker.tyk import decorators, event, request, session
from tykworker.worker.tyk import gateway as gateway_api
from tykworker.worker.tyk import object as object_module

PROTO_MODULES: Final = (
    "coprocess_common_pb2",
    "coprocess_mini_request_object_pb2",
    "coprocess_object_pb2",
    "coprocess_response_object_pb2",
    "coprocess_return_overrides_pb2",
    "coprocess_session_state_pb2",
)

#: ``tyk.<name>`` submodules, also importable by their bare name.
TYK_SUBMODULES: Final[dict[str, ModuleType]] = {
    "decorators": decorators,
    "gateway": gateway_api,
    "request": request,
    "session": session,
    "object": object_module,
    "event": event,
}

_MARK: Final = "__tykworker_compat__"
_SOFT_NAMES: Final = frozenset(TYK_SUBMODULES) - {"gateway"}


def _tyk_package() -> ModuleType:
    package = ModuleType("tyk", "Tyk embedded-Python API, provided by tykworker.")
    package.__path__ = []
    package.__spec__ = ModuleSpec("tyk", None, is_package=True)
    package.__package__ = "tyk"
    setattr(package, _MARK, True)
    for name, module in TYK_SUBMODULES.items():
        setattr(package, name, module)
    return package


def aliases() -> dict[str, ModuleType]:
    """Every name ``install()`` provides, mapped to its module."""
    table: dict[str, ModuleType] = {"tyk": _tyk_package()}
    for name, module in TYK_SUBMODULES.items():
        table[f"tyk.{name}"] = module
        table[name] = module
    for name in PROTO_MODULES:
        table[name] = importlib.import_module(f"tykworker._proto.{name}")
    return table


def install() -> None:
    """Register the shims in ``sys.modules`` (idempotent)."""
    existing = sys.modules.get("tyk")
    if existing is not None and getattr(existing, _MARK, False):
        return
    for name, module in aliases().items():
        if name in _SOFT_NAMES and sys.modules.get(name, module) is not module:
            continue
        sys.modules[name] = module
