"""Build ``coprocess.Object`` messages the way the gateway does (PROTOCOL.md section 2).

Used by ``tykworker call`` (a grpcurl for Tyk plugins) and by the tests, so both send what
a stock gateway sends. Every request hook gets headers (first value, canonical names, plus
``Host``), url, params (first value of each query parameter), method, request_uri, scheme,
raw_body (and body when UTF-8), empty outbound maps/lists,
``return_overrides.response_code = -1`` and a spec with OrgID, APIID and bundle_hash
(md5 of the bundle name; md5("") without a bundle). Sessions only where the gateway sends
them: PostKeyAuth/Post (authenticated requests, when the caller passes one) and Response
hooks (always; empty when there is none).

Pure: no I/O. Never imported by the supervisor or the front.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit

from tykworker._proto import coprocess_common_pb2 as common_pb2
from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker._proto import coprocess_session_state_pb2 as session_pb2

NO_BUNDLE = hashlib.md5(b"").hexdigest()
PRE, POST, POST_KEY_AUTH, AUTH, RESPONSE = (
    common_pb2.Pre,
    common_pb2.Post,
    common_pb2.PostKeyAuth,
    common_pb2.CustomKeyCheck,
    common_pb2.Response,
)


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
) -> object_pb2.Object:
    """An Object for ``hook_name`` as the gateway builds it for one request.

    ``spec`` entries are added last (they may replace OrgID/APIID/bundle_hash). A Response
    hook gets a small ``200 text/plain`` upstream response.
    """
    obj = object_pb2.Object(hook_name=hook_name)
    obj.hook_type = hook_type  # type: ignore[assignment]  # any number, as on the wire
    req = obj.request
    req.headers.update({"Host": "gateway.local", "User-Agent": "curl/8", **(headers or {})})
    req.url = url
    req.request_uri = url
    req.method = method
    req.scheme = "http"
    req.raw_body = body
    if _is_utf8(body):
        req.body = body.decode("utf-8")
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
    if hook_type == RESPONSE:
        _add_response(obj, session)
    return obj


def _add_response(obj: object_pb2.Object, session: session_pb2.SessionState | None) -> None:
    if session is None:
        obj.session.SetInParent()
    resp = obj.response
    resp.status_code = 200
    resp.raw_body = b"upstream body"
    resp.body = "upstream body"
    resp.headers.update({"Content-Type": "text/plain", "Set-Cookie": "a=1"})
    resp.multivalue_headers.add(key="Content-Type", values=["text/plain"])
    resp.multivalue_headers.add(key="Set-Cookie", values=["a=1", "b=2"])


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
