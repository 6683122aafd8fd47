"""``make_object``: the ``coprocess.Object`` the gateway sends for one request, for tests.

Built by the project's one gateway-shaped builder (``tykworker.cli.objects``, which
``tykworker call`` uses too), with the defaults of a plain ``GET /``. Runs in the test
process; pure (no I/O) except reading ``from_file``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker._proto import coprocess_session_state_pb2 as session_pb2
from tykworker.cli import objects
from tykworker.config import HOOK_TYPES

#: Hook type names accepted by ``make_object`` (as in ``tykworker call --type``), and
#: ``"auth_check"``, the API definition's name for ``"auth"``.
HOOK_TYPE_NAMES = {**{k: v for k, v in HOOK_TYPES.items() if k != "event"}, "auth_check": 4}

Session = session_pb2.SessionState | Mapping[str, Any] | str


def hook_type_number(hook_type: str | int) -> int:
    """``"pre"`` -> 1 ... (a number is returned as it is). Raises ``ValueError``."""
    if isinstance(hook_type, int):
        return hook_type
    try:
        return HOOK_TYPE_NAMES[hook_type]
    except KeyError:
        known = ", ".join(HOOK_TYPE_NAMES)
        raise ValueError(f"unknown hook type {hook_type!r} (one of {known})") from None


def make_object(
    hook_type: str | int | None = None,
    hook_name: str = "",
    *,
    method: str | None = None,
    url: str | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes | str | None = None,
    params: Mapping[str, str] | None = None,
    session: Session | None = None,
    metadata: Mapping[str, str] | None = None,
    spec: Mapping[str, str] | None = None,
    config_data: Mapping[str, Any] | str | None = None,
    response: Mapping[str, Any] | None = None,
    from_file: str | PathLike[str] | None = None,
) -> object_pb2.Object:
    """The Object the gateway builds for ``hook_type`` (``"pre"``, ``"auth"``,
    ``"post_key_auth"``, ``"post"``, ``"response"`` or the ``HookType`` number).

    * ``method`` (default ``"GET"``), ``url`` (path and query, default ``"/"``), ``params``
      (appended to the query), ``headers`` (names canonicalised as the gateway does:
      ``x-api-key`` -> ``X-Api-Key``; ``Host`` and ``User-Agent`` are added), ``body``
      (bytes or text; default empty);
    * ``session``: a ``SessionState``, or its protobuf JSON (a dict or text); ``metadata``
      entries are added to the session's metadata. Only for the hook types the gateway sends
      a session to (``post_key_auth``, ``post``, ``response``): ``ValueError`` otherwise;
    * ``spec`` entries (``APIID`` is ``"api-1"``, ``OrgID`` ``"org-1"`` unless given),
      ``config_data`` (a dict, sent as its JSON text, or the text itself);
    * ``response``: the upstream's answer to a Response hook, ``{"status": 201, "headers":
      {"Content-Type": "application/json", "Set-Cookie": ["a=1", "b=2"]}, "body": b"..."}``
      (default: ``200``, ``text/plain``, ``b"upstream body"``). ``ValueError`` for other
      hook types.

    With ``from_file`` (a file written by ``tykworker serve --capture``, JSON or binary) the
    captured Object is the start and only the arguments given change it (headers, spec and
    metadata are merged); ``hook_type`` may then be left out.
    """
    number = None if hook_type is None else hook_type_number(hook_type)
    state = _session(session)
    changes: dict[str, Any] = {
        "headers": {objects.canonical_header(k): v for k, v in (headers or {}).items()},
        "method": method.upper() if method else None,
        "url": url,
        "body": body.encode("utf-8") if isinstance(body, str) else body,
        "spec": spec,
        "config_data": _config_text(config_data),
        "session": state,
        "metadata": metadata,
        "response": response,
    }
    if from_file is not None:
        obj = load_object(from_file)
        if params:
            changes["url"] = _with_params(url or obj.request.url, params)
        objects.override(obj, hook_type=number, hook_name=hook_name or None, **changes)
    elif number is None:
        raise ValueError("make_object needs a hook_type (or from_file)")
    else:
        changes["url"] = url or "/"
        changes["method"] = changes["method"] or "GET"
        changes["body"] = changes["body"] or b""
        obj = objects.gateway_object(number, hook_name, params=params, **changes)
    _check_shape(obj.hook_type, state, metadata, response)
    return obj


def _config_text(config_data: Mapping[str, Any] | str | None) -> str | None:
    if config_data is None or isinstance(config_data, str):
        return config_data
    return json.dumps(config_data)


def load_object(path: str | PathLike[str]) -> object_pb2.Object:
    """The Object in a capture file (JSON or binary). Raises ``ValueError`` or ``OSError``."""
    file = Path(path)
    try:
        return objects.object_from_bytes(file.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{file}: {exc}") from exc


def _with_params(url: str, params: Mapping[str, str]) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(list(params.items()))


def _session(session: Session | None) -> session_pb2.SessionState | None:
    if session is None or isinstance(session, session_pb2.SessionState):
        return session
    return objects.session_from_json(session)


def _check_shape(
    hook_type: int,
    session: object,
    metadata: Mapping[str, str] | None,
    response: object,
) -> None:
    if (session is not None or metadata) and hook_type not in objects.SESSION_HOOKS:
        raise ValueError(
            "the gateway sends a session (and metadata) only to post_key_auth, post and "
            f"response hooks, not to hook type {hook_type}"
        )
    if response is not None and hook_type != objects.RESPONSE:
        raise ValueError(f"only response hooks get an upstream response, not hook type {hook_type}")
