"""Build ``coprocess.Object`` messages the way the gateway does (PROTOCOL.md section 2).

Used by ``tykworker call`` (a grpcurl for Tyk plugins), by ``tykworker.testing`` and by the
tests, so all send what a stock gateway sends. Every request hook gets headers (first value,
canonical names, plus ``Host``), url, params (first value of each query parameter), method,
request_uri, scheme, raw_body (and body when UTF-8), empty outbound maps/lists,
``return_overrides.response_code = -1`` and a spec with OrgID, APIID and bundle_hash
(md5 of the bundle name; md5("") without a bundle). Sessions only where the gateway sends
them: PostKeyAuth/Post (authenticated requests, when the caller passes one) and Response
hooks (always; empty when there is none). ``metadata`` is the session's metadata, sent
only with a session. A Response hook also gets the upstream's answer: ``status_code``,
``raw_body`` (and ``body`` when UTF-8), ``headers`` (first value of each name, canonical)
and ``multivalue_headers`` (every value).

Also here, for ``tykworker call`` and ``tykworker.testing``: reading an Object back from a
capture file (``object_from_bytes``: protobuf JSON or binary), sessions from JSON, changing
chosen fields of an existing Object (``override``) and the gateway's reading of a Response
hook's headers (``sync_response_headers``).

Pure: no I/O. Never imported by the supervisor or the front.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from tykworker._proto import coprocess_common_pb2 as common_pb2
from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker._proto import coprocess_response_object_pb2 as response_pb2
from tykworker._proto import coprocess_session_state_pb2 as session_pb2

NO_BUNDLE = hashlib.md5(b"").hexdigest()
PRE, POST, POST_KEY_AUTH, AUTH, RESPONSE = (
    common_pb2.Pre,
    common_pb2.Post,
    common_pb2.PostKeyAuth,
    common_pb2.CustomKeyCheck,
    common_pb2.Response,
)
#: Hook types the gateway sends a session (and metadata) to, when the request has one.
SESSION_HOOKS: Final = frozenset({POST_KEY_AUTH, POST, RESPONSE})
#: The upstream answer a Response hook gets when the caller gives none.
DEFAULT_RESPONSE: Final[Mapping[str, Any]] = {
    "status": 200,
    "headers": {"Content-Type": "text/plain", "Set-Cookie": ["a=1", "b=2"]},
    "body": b"upstream body",
}

#: An upstream response: ``{"status": int, "headers": {name: value or [values]},
#: "body": bytes or str}`` (every key optional: 200, no headers, empty body).
ResponseSpec = Mapping[str, Any]


def bundle_hash(name: str) -> str:
    """``spec["bundle_hash"]`` of an API whose ``custom_middleware_bundle`` is ``name``."""
    return hashlib.md5(name.encode()).hexdigest()


def canonical_header(name: str) -> str:
    """Go's canonical MIME header key, as the gateway sends it: ``x-api-key`` ->
    ``X-Api-Key``."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def gateway_object(
    hook_type: int,
    hook_name: str,
    *,
    headers: Mapping[str, str] | None = None,
    url: str = "/api/path?q=1",
    method: str = "POST",
    body: bytes = b'{"hello": "world"}',
    bundle: str = NO_BUNDLE,
    api_id: str = "api-1",
    config_data: str | None = None,
    session: session_pb2.SessionState | None = None,
    spec: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    metadata: Mapping[str, str] | None = None,
    response: ResponseSpec | None = None,
) -> object_pb2.Object:
    """An Object for ``hook_name`` as the gateway builds it for one request.

    ``params`` are appended to the query of ``url`` (``params`` is then the first value of
    each query parameter, as the gateway computes it). ``spec`` entries are added last (they
    may replace OrgID/APIID/bundle_hash). ``metadata`` entries go into the session's
    metadata (a session is created for them). A Response hook gets ``response`` as the
    upstream's answer (``DEFAULT_RESPONSE`` when ``None``) and always a session.
    """
    obj = object_pb2.Object(hook_name=hook_name)
    obj.hook_type = hook_type  # type: ignore[assignment]  # any number, as on the wire
    if params:
        url = url + ("&" if "?" in url else "?") + urlencode(list(params.items()))
    req = obj.request
    req.headers.update({"Host": "gateway.local", "User-Agent": "curl/8", **(headers or {})})
    req.url = url
    req.request_uri = url
    req.method = method
    req.scheme = "http"
    set_request_body(obj, body)
    for key, value in reversed(parse_qsl(urlsplit(url).query, keep_blank_values=True)):
        req.params[key] = value  # reversed: the first value wins, as in the gateway
    req.return_overrides.response_code = -1
    obj.spec.update({"OrgID": "org-1", "APIID": api_id, "bundle_hash": bundle})
    if config_data is not None:
        obj.spec["config_data"] = config_data
    obj.spec.update(spec or {})
    if session is not None:
        obj.session.CopyFrom(session)
        obj.metadata.update(session.metadata)
    if metadata:
        add_metadata(obj, metadata)
    if hook_type == RESPONSE:
        obj.session.SetInParent()  # always sent to Response hooks (empty without one)
        set_response(obj, DEFAULT_RESPONSE if response is None else response)
    return obj


def set_request_body(obj: object_pb2.Object, body: bytes) -> None:
    """``raw_body``, and ``body`` when the bytes are UTF-8 (as the gateway sends them)."""
    obj.request.raw_body = body
    obj.request.body = body.decode("utf-8") if _is_utf8(body) else ""


def add_metadata(obj: object_pb2.Object, metadata: Mapping[str, str]) -> None:
    """Merge ``metadata`` into the session's metadata and the Object's copy of it."""
    obj.session.metadata.update(metadata)
    obj.metadata.update(obj.session.metadata)


def set_response(obj: object_pb2.Object, spec: ResponseSpec) -> None:
    """Make ``spec`` (see ``ResponseSpec``) the upstream answer of a Response hook.

    Raises ``ValueError`` for an unknown key or a value of the wrong type."""
    unknown = set(spec) - {"status", "headers", "body"}
    if unknown:
        raise ValueError(f"response: unknown keys {sorted(unknown)} (status, headers, body)")
    status = spec.get("status", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 999:
        raise ValueError(f"response status must be an HTTP status code, got {status!r}")
    body = spec.get("body", b"")
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, (bytes, bytearray)):
        raise ValueError(f"response body must be bytes or str, got {type(body).__name__}")
    resp = response_pb2.ResponseObject(status_code=status, raw_body=bytes(body))
    if _is_utf8(resp.raw_body):
        resp.body = resp.raw_body.decode("utf-8")
    for name, value in (spec.get("headers") or {}).items():
        values = [value] if isinstance(value, str) else list(value)
        if not values or not all(isinstance(v, str) for v in values):
            raise ValueError(f"response header {name!r}: expected a string or strings")
        key = canonical_header(str(name))
        resp.headers[key] = values[0]
        resp.multivalue_headers.add(key=key, values=values)
    obj.response.CopyFrom(resp)


def sync_response_headers(sent: Mapping[str, str], response: response_pb2.ResponseObject) -> None:
    """Rewrite ``response.multivalue_headers`` as the gateway reads a Response hook's reply
    (``syncHeadersAndMultiValueHeaders``, gateway/coprocess.go): when the returned
    ``headers`` differ from ``sent``, a name changed or added there gets that one value and
    a name removed there is dropped; otherwise ``multivalue_headers`` is used as returned.
    Afterwards ``multivalue_headers`` is exactly what the client gets."""
    headers = dict(response.headers)
    if headers == dict(sent):
        return
    kept = [
        (h.key, list(h.values))
        for h in response.multivalue_headers
        if h.key in headers and headers[h.key] == sent.get(h.key)
    ]
    listed = {key for key, _ in kept}
    changed = [(k, [v]) for k, v in headers.items() if k not in listed]
    del response.multivalue_headers[:]
    for key, values in kept + changed:
        response.multivalue_headers.add(key=key, values=values)


def session_from_json(text: str | bytes | Mapping[str, Any]) -> session_pb2.SessionState:
    """A ``SessionState`` from its protobuf JSON mapping (text or an already parsed dict;
    proto field names or their camelCase forms). Raises ``ValueError`` naming the field."""
    try:
        doc = json.loads(text) if isinstance(text, (str, bytes)) else dict(text)
    except ValueError as exc:
        raise ValueError(f"session is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("session must be a JSON object")
    try:
        return json_format.ParseDict(doc, session_pb2.SessionState())
    except json_format.ParseError as exc:
        raise ValueError(f"session: {exc}") from exc


def object_from_bytes(data: bytes) -> object_pb2.Object:
    """An Object from a capture file's content: protobuf JSON (what ``serve --capture``
    writes) or the binary encoding. Raises ``ValueError`` when it is neither."""
    if data.lstrip()[:1] == b"{":
        try:
            return json_format.Parse(data, object_pb2.Object())
        except json_format.ParseError as exc:
            raise ValueError(f"not a coprocess.Object in JSON: {exc}") from exc
    try:
        return object_pb2.Object.FromString(data)
    except DecodeError as exc:
        raise ValueError(f"not a coprocess.Object (JSON or binary): {exc}") from exc


def override(
    obj: object_pb2.Object,
    *,
    hook_type: int | None = None,
    hook_name: str | None = None,
    headers: Mapping[str, str] | None = None,
    method: str | None = None,
    url: str | None = None,
    body: bytes | None = None,
    spec: Mapping[str, str] | None = None,
    config_data: str | None = None,
    session: session_pb2.SessionState | None = None,
    metadata: Mapping[str, str] | None = None,
    response: ResponseSpec | None = None,
) -> object_pb2.Object:
    """Change the given parts of ``obj`` (a captured call, say) in place and return it.

    ``None`` leaves a part as it is. Headers, spec and metadata entries are merged; a new
    ``url`` recomputes ``request_uri`` and ``params``; a new session replaces the old one
    (and ``metadata`` with it)."""
    if hook_type is not None:
        obj.hook_type = hook_type  # type: ignore[assignment]
    if hook_name is not None:
        obj.hook_name = hook_name
    req = obj.request
    req.headers.update(headers or {})
    if method is not None:
        req.method = method
    if url is not None:
        req.url = req.request_uri = url
        req.ClearField("params")
        for key, value in reversed(parse_qsl(urlsplit(url).query, keep_blank_values=True)):
            req.params[key] = value
    if body is not None:
        set_request_body(obj, body)
    obj.spec.update(spec or {})
    if config_data is not None:
        obj.spec["config_data"] = config_data
    if session is not None:
        obj.session.CopyFrom(session)
        obj.ClearField("metadata")
        obj.metadata.update(session.metadata)
    if metadata:
        add_metadata(obj, metadata)
    if response is not None:
        set_response(obj, response)
    return obj


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def authenticated_session(token: str = "tok-1", rate: float = 3.0) -> session_pb2.SessionState:
    """A session as the gateway sends it for an authenticated key."""
    session = session_pb2.SessionState(rate=rate, per=1.0, org_id="org-1")
    session.metadata["token"] = token
    session.basic_auth_data.SetInParent()
    session.jwt_data.SetInParent()
    session.monitor.SetInParent()
    return session


def parse(reply: bytes) -> object_pb2.Object:
    return object_pb2.Object.FromString(reply)
