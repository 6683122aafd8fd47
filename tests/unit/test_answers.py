"""Answers made on a hook's behalf (``tykworker.answers``).

The reply is ``original bytes + fragment``; these tests decode it with the real protobuf
classes and compare whole messages, so anything the fragment clobbers shows up.
"""

from __future__ import annotations

import json

import pytest

from tykworker._proto import coprocess_common_pb2 as common_pb2
from tykworker._proto import coprocess_mini_request_object_pb2 as request_pb2
from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker._proto import coprocess_return_overrides_pb2 as overrides_pb2
from tykworker.cli import objects
from tykworker.wire.answers import (
    ANSWER_HEADER,
    RESPONSE_HOOK,
    event_answer,
    event_reply,
    failure_reply,
    override_fragment,
)
from tykworker.wire.frames import peek_object_header
from tykworker.wire.reasons import Reason

REQUEST_HOOKS = [common_pb2.Pre, common_pb2.Post, common_pb2.PostKeyAuth, common_pb2.CustomKeyCheck]
ALL_HOOKS = [*REQUEST_HOOKS, common_pb2.Response]


#: The upstream answer Response hooks get: a body longer than any error body (a failure
#: answer must replace it, not write over its start) and a header with two values.
UPSTREAM = {
    "status": 200,
    "headers": {"Content-Type": "text/html", "X-Upstream": "1", "Set-Cookie": ["a=1", "b=2"]},
    "body": b'{"upstream": "a body much longer than the error body"}',
}


def gateway_object(hook_type: int) -> object_pb2.Object:
    """What the gateway sends to hook ``MyHook`` of ``hook_type`` (``objects.gateway_object``):
    a secret header and a binary body, which answers must hand back unchanged, and a session
    where the gateway sends one."""
    return objects.gateway_object(
        hook_type,
        "MyHook",
        headers={"Content-Type": "text/plain", "Authorization": "secret"},
        method="PUT",
        url="/listen/path?q=1",
        body=b"hello\x00\xff binary",
        session=objects.authenticated_session() if hook_type in objects.SESSION_HOOKS else None,
        response=UPSTREAM,
    )


def decode(data: bytes) -> object_pb2.Object:
    return object_pb2.Object.FromString(data)


@pytest.mark.parametrize("reason", list(Reason))
@pytest.mark.parametrize("hook_type", REQUEST_HOOKS)
def test_request_hook_failure_sets_return_overrides_only(
    hook_type: common_pb2.HookType, reason: Reason
) -> None:
    original = gateway_object(hook_type)
    reply = decode(failure_reply(original.SerializeToString(), hook_type, reason, False))

    expected = object_pb2.Object()
    expected.CopyFrom(original)
    overrides = expected.request.return_overrides
    overrides.response_code = reason.status
    overrides.response_error = reason.message
    overrides.headers[ANSWER_HEADER] = reason.code
    assert reply == expected
    # The override fires in the gateway (code >= 400, JSON error template).
    assert reply.request.return_overrides.response_code >= 400
    assert not reply.request.return_overrides.override_error


@pytest.mark.parametrize("reason", list(Reason))
@pytest.mark.parametrize("hook_type", REQUEST_HOOKS)
def test_request_hook_failure_echoes_what_the_gateway_reads_back(
    hook_type: common_pb2.HookType, reason: Reason
) -> None:
    original = gateway_object(hook_type)
    reply = decode(failure_reply(original.SerializeToString(), hook_type, reason, False))
    assert reply.request.raw_body == original.request.raw_body
    assert reply.request.url == original.request.url
    assert reply.request.method == original.request.method
    assert dict(reply.request.headers) == dict(original.request.headers)
    assert reply.HasField("session") == original.HasField("session")
    assert reply.session == original.session
    assert dict(reply.metadata) == dict(original.metadata)
    assert dict(reply.spec) == dict(original.spec)
    assert (reply.hook_type, reply.hook_name) == (hook_type, "MyHook")
    assert not reply.HasField("response")


@pytest.mark.parametrize("reason", list(Reason))
def test_response_hook_failure_rewrites_the_response(reason: Reason) -> None:
    original = gateway_object(common_pb2.Response)
    reply = decode(failure_reply(original.SerializeToString(), RESPONSE_HOOK, reason, False))

    assert reply.response.status_code == reason.status
    # Replaced, not appended to the longer upstream body.
    assert json.loads(reply.response.raw_body) == {"error": reason.message}
    assert reply.response.headers["Content-Type"] == "application/json"
    assert reply.response.headers[ANSWER_HEADER] == reason.code
    assert reply.response.headers["X-Upstream"] == "1"

    expected = object_pb2.Object()
    expected.CopyFrom(original)
    expected.response.status_code = reason.status
    expected.response.raw_body = reply.response.raw_body
    expected.response.headers["Content-Type"] = "application/json"
    expected.response.headers[ANSWER_HEADER] = reason.code
    assert reply == expected
    # Response hooks ignore return_overrides: it stays what the gateway sent.
    assert reply.request.return_overrides.response_code == -1
    assert list(reply.response.multivalue_headers) == list(original.response.multivalue_headers)
    assert reply.session == original.session
    assert reply.request.raw_body == original.request.raw_body


@pytest.mark.parametrize("reason", list(Reason))
@pytest.mark.parametrize("hook_type", ALL_HOOKS)
def test_fail_open_returns_the_original_bytes(
    hook_type: common_pb2.HookType, reason: Reason
) -> None:
    original = gateway_object(hook_type).SerializeToString()
    assert failure_reply(original, hook_type, reason, True) == original


@pytest.mark.parametrize("hook_type", ALL_HOOKS)
def test_failure_reply_keeps_the_peekable_header(hook_type: common_pb2.HookType) -> None:
    original = gateway_object(hook_type).SerializeToString()
    reply = failure_reply(original, hook_type, Reason.TIMEOUT, False)
    assert reply.startswith(original)
    assert peek_object_header(reply) == (hook_type, "MyHook")


def test_existing_override_headers_are_kept_and_ours_added() -> None:
    original = gateway_object(common_pb2.Pre)
    original.request.return_overrides.headers["X-Earlier"] = "yes"
    original.request.return_overrides.response_body = "earlier body"
    reply = decode(failure_reply(original.SerializeToString(), common_pb2.Pre, Reason.CRASH, False))
    assert dict(reply.request.return_overrides.headers) == {
        "X-Earlier": "yes",
        ANSWER_HEADER: "crash",
    }
    assert reply.request.return_overrides.response_code == 502
    # response_error wins over response_body in the gateway: CoProcessMiddleware copies it
    # over response_body before applying return_overrides (gateway/coprocess.go).
    assert reply.request.return_overrides.response_error == "Plugin crashed"


def test_unknown_hook_type_gets_a_request_override() -> None:
    original = gateway_object(common_pb2.Unknown).SerializeToString()
    reply = decode(failure_reply(original, common_pb2.Unknown, Reason.NO_HOOK, False))
    assert reply.request.return_overrides.response_code == 500
    assert reply.request.return_overrides.response_error == "Plugin hook not found"
    assert not reply.HasField("response")


def test_empty_original_still_gives_a_complete_answer() -> None:
    # A malformed call the worker cannot parse is answered from nothing.
    reply = decode(failure_reply(b"", common_pb2.Pre, Reason.BAD_REQUEST, False))
    assert reply.HasField("request")
    assert reply.request.HasField("return_overrides")
    assert reply.request.return_overrides.response_code == 400


@pytest.mark.parametrize(
    ("reason", "status", "message", "code"),
    [
        (Reason.TIMEOUT, 504, "Plugin timeout", "timeout"),
        (Reason.CRASH, 502, "Plugin crashed", "crash"),
        (Reason.OVERLOAD, 503, "Plugin overloaded", "overload"),
        (Reason.UNAVAILABLE, 503, "Plugin unavailable", "unavailable"),
        (Reason.HOOK_ERROR, 500, "Plugin error", "hook_error"),
        (Reason.NO_HOOK, 500, "Plugin hook not found", "no_hook"),
        (Reason.BAD_REQUEST, 400, "Malformed plugin call", "bad_request"),
    ],
)
def test_reason_table(reason: Reason, status: int, message: str, code: str) -> None:
    assert (reason.status, reason.message, reason.code) == (status, message, code)


def test_override_fragment_with_custom_values() -> None:
    fragment = decode(override_fragment(common_pb2.Post, 429, 'Too "many"', "limit"))
    # Built here field by field, not with gateway_object: a fragment is not a gateway
    # Object but the few fields merged over one, and must hold exactly these.
    assert fragment == object_pb2.Object(
        request=request_pb2.MiniRequestObject(
            return_overrides=overrides_pb2.ReturnOverrides(
                response_code=429, response_error='Too "many"', headers={ANSWER_HEADER: "limit"}
            )
        )
    )
    response = decode(override_fragment(RESPONSE_HOOK, 418, 'Tea "pot"', "tea")).response
    assert response.status_code == 418
    assert json.loads(response.raw_body) == {"error": 'Tea "pot"'}
    assert dict(response.headers) == {ANSWER_HEADER: "tea", "Content-Type": "application/json"}


def test_failure_reply_is_deterministic() -> None:
    original = gateway_object(common_pb2.Response).SerializeToString()
    first = failure_reply(original, RESPONSE_HOOK, Reason.OVERLOAD, False)
    assert failure_reply(original, RESPONSE_HOOK, Reason.OVERLOAD, False) == first
    assert failure_reply(original, RESPONSE_HOOK, Reason.TIMEOUT, False) != first


def test_event_reply_is_an_empty_event_reply() -> None:
    data = event_reply()
    assert data == b""
    assert object_pb2.EventReply.FromString(data).ListFields() == []  # it decodes


def test_event_reply_carries_the_reason_in_a_field_the_gateway_skips() -> None:
    for reason in Reason:
        data = event_reply(reason.code)
        assert object_pb2.EventReply.FromString(data).ListFields() == []  # it decodes
        assert event_answer(data) == reason.code
    assert event_answer(event_reply()) == ""
    assert event_answer(b"\x7a\x05abc") == ""  # truncated: not ours


def test_docs_name_the_event_answer_field() -> None:
    from pathlib import Path

    from tykworker.wire.answers import EVENT_ANSWER_FIELD

    doc = (Path(__file__).parents[2] / "docs" / "plugins.md").read_text()
    assert f"(number {EVENT_ANSWER_FIELD}, skipped by the gateway's" in " ".join(doc.split())
