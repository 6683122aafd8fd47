"""Dispatch of real gateway-shaped Objects: conventions, echo, error answers, events."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.cli.objects import (
    AUTH,
    POST,
    POST_KEY_AUTH,
    PRE,
    RESPONSE,
    authenticated_session,
    gateway_object,
    parse,
)
from tykworker.config import Settings
from tykworker.logs import active_call
from tykworker.wire import answers
from tykworker.wire.answers import event_answer
from tykworker.wire.reasons import Reason
from tykworker.worker import dispatch
from tykworker.worker.plugins import Runtime, load_runtime
from tykworker.worker.tyk.gateway import SECRET_HEADERS, CallContext

FIXTURES = Path(__file__).parent.parent / "fixtures" / "plugins"


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = load_runtime(
        Settings(
            middleware=str(FIXTURES / "conventions"),
            event_handlers=str(FIXTURES / "events"),
            runtime_dir=str(tmp_path),
        )
    )
    yield rt
    rt.close()


def call(runtime: Runtime, obj: object_pb2.Object) -> object_pb2.Object:
    return parse(runtime.dispatch(obj.SerializeToString()))


def module_global(runtime: Runtime, hook: str, name: str) -> Any:
    registry = runtime.middleware
    handler = registry.hooks.get(hook) or registry.events[hook]
    return handler.f.__globals__[name]


def assert_error_answer(reply: object_pb2.Object, sent: object_pb2.Object, reason: Reason) -> None:
    """The original Object echoed, plus the reason's override (request hooks)."""
    expected = object_pb2.Object()
    expected.CopyFrom(sent)
    overrides = expected.request.return_overrides
    overrides.response_code = reason.status
    overrides.response_error = reason.message
    overrides.headers[answers.ANSWER_HEADER] = reason.code
    assert reply == expected


# --- conventions -------------------------------------------------------------------


def test_three_arg_hook_mutates_request_in_place_and_echoes_everything(runtime: Runtime) -> None:
    sent = gateway_object(PRE, "AddHeader", config_data='{"a": 1}')
    reply = call(runtime, sent)
    assert dict(reply.request.set_headers) == {"X-Added": "yes"}
    assert list(reply.request.delete_headers) == ["X-Remove"]
    assert dict(reply.request.add_params) == {"added": "1"}
    assert list(reply.request.delete_params) == ["removed"]
    # Echoed fields the gateway reads back unconditionally.
    assert reply.request.raw_body == sent.request.raw_body
    assert reply.request.url == sent.request.url
    assert reply.request.method == sent.request.method
    assert reply.request.return_overrides.response_code == -1
    assert reply.spec["APIID"] == "api-1"
    # A missing protobuf map key reads as "" inside the plugin (Tyk plugins rely on it).
    assert module_global(runtime, "AddHeader", "CALLS")[-1] == ("AddHeader", "", '{"a": 1}')


def test_hook_changes_body_url_and_method(runtime: Runtime) -> None:
    reply = call(runtime, gateway_object(POST, "RewriteBody"))
    assert (reply.request.raw_body, reply.request.url, reply.request.method) == (
        b"rewritten",
        "/rewritten",
        "PUT",
    )


def test_auth_hook_accepts_with_token_in_session_metadata(runtime: Runtime) -> None:
    sent = gateway_object(AUTH, "Authenticate", headers={"Authorization": "Bearer good-token"})
    assert not sent.HasField("session")  # the gateway sends no session to auth hooks
    reply = call(runtime, sent)
    assert reply.HasField("session")
    assert reply.session.metadata["token"] == "good-token"
    assert (reply.session.rate, reply.session.per) == (10.0, 1.0)
    assert reply.request.return_overrides.response_code == -1


def test_auth_hook_rejects_with_override(runtime: Runtime) -> None:
    reply = call(runtime, gateway_object(AUTH, "Authenticate", headers={"Authorization": "x"}))
    assert reply.request.return_overrides.response_code == 401
    assert reply.request.return_overrides.response_error == "bad key"
    assert not reply.HasField("session")


def test_returned_new_session_and_dict_metadata_are_kept(runtime: Runtime) -> None:
    reply = call(runtime, gateway_object(AUTH, "NewSessionAuth"))
    assert reply.session.rate == 5.0
    assert reply.session.metadata["token"] == "new-session-token"


def test_post_key_auth_sees_the_session(runtime: Runtime) -> None:
    sent = gateway_object(POST_KEY_AUTH, "TypedPostKeyAuth", session=authenticated_session())
    reply = call(runtime, sent)
    assert reply.request.set_headers["X-Session-Rate"] == "3.0"
    assert reply.session == sent.session


def test_five_arg_response_hook_edits_response(runtime: Runtime) -> None:
    sent = gateway_object(RESPONSE, "AppendResponseHeader")
    reply = call(runtime, sent)
    assert reply.response.headers["X-Response"] == "added"
    assert reply.response.headers["Set-Cookie"] == "a=1"
    assert reply.response.raw_body == b"upstream body!"
    assert reply.response.status_code == 200
    assert list(reply.response.multivalue_headers) == list(sent.response.multivalue_headers)


def test_returned_new_response_object_is_copied_into_reply(runtime: Runtime) -> None:
    reply = call(runtime, gateway_object(RESPONSE, "ReplaceResponse"))
    assert reply.response.status_code == 201
    assert reply.response.raw_body == b"upstream body"


@pytest.mark.parametrize(
    ("hook_type", "name", "header", "value"),
    [
        (PRE, "TypedPre", "X-Typed", "pre"),
        (POST, "TypedPost", "X-Typed", "post"),
    ],
)
def test_typed_request_decorators_work(
    runtime: Runtime, hook_type: int, name: str, header: str, value: str
) -> None:
    reply = call(runtime, gateway_object(hook_type, name))
    assert reply.request.set_headers[header] == value


def test_typed_custom_key_check_and_response_work(runtime: Runtime) -> None:
    assert call(runtime, gateway_object(AUTH, "TypedAuth")).session.metadata["token"] == "typed"
    reply = call(runtime, gateway_object(RESPONSE, "TypedResponse"))
    assert reply.response.headers["X-Typed"] == "response"


# --- empty hook name for auth ------------------------------------------------------


def test_empty_auth_hook_name_is_refused_with_403_never_guessed(runtime: Runtime) -> None:
    # The runtime has exactly one @CustomKeyCheck: it must not run for an empty name.
    sent = gateway_object(AUTH, "")
    reply = call(runtime, sent)
    assert "token" not in reply.session.metadata
    assert reply.request.return_overrides.response_code == 403
    assert reply.request.return_overrides.headers[answers.ANSWER_HEADER] == "no_hook"


def test_unknown_named_auth_hook_fails_closed(runtime: Runtime) -> None:
    sent = gateway_object(AUTH, "NoSuchAuthHook")
    assert_error_answer(call(runtime, sent), sent, Reason.NO_HOOK)


def test_empty_hook_name_for_non_auth_hook_is_not_found(runtime: Runtime) -> None:
    sent = gateway_object(PRE, "")
    assert_error_answer(call(runtime, sent), sent, Reason.NO_HOOK)


# --- error answers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("hook_type", "name"),
    [(PRE, "Raises"), (POST, "ReturnsNone"), (AUTH, "ReturnsWrongLength"), (PRE, "TwoArgs")],
)
def test_failing_hooks_answer_plugin_error_with_original_echoed(
    runtime: Runtime, hook_type: int, name: str
) -> None:
    sent = gateway_object(hook_type, name)
    reply = call(runtime, sent)
    # Half-done mutations (X-Half-Done) never reach the gateway.
    assert "X-Half-Done" not in reply.request.set_headers
    assert_error_answer(reply, sent, Reason.HOOK_ERROR)


def test_key_error_inside_hook_is_a_plugin_error_not_a_missing_hook(runtime: Runtime) -> None:
    sent = gateway_object(PRE, "RaisesKeyError")
    assert_error_answer(call(runtime, sent), sent, Reason.HOOK_ERROR)


def test_system_exit_in_hook_does_not_escape(runtime: Runtime) -> None:
    sent = gateway_object(PRE, "Exits")
    assert_error_answer(call(runtime, sent), sent, Reason.HOOK_ERROR)


@pytest.mark.parametrize("hook_type", [PRE, POST, POST_KEY_AUTH, AUTH])
def test_unknown_hook_answers_not_found(runtime: Runtime, hook_type: int) -> None:
    sent = gateway_object(hook_type, "DoesNotExist")
    assert_error_answer(call(runtime, sent), sent, Reason.NO_HOOK)


def test_response_hook_errors_replace_the_response(runtime: Runtime) -> None:
    for name, reason in [("Raises", Reason.HOOK_ERROR), ("Nope", Reason.NO_HOOK)]:
        reply = call(runtime, gateway_object(RESPONSE, name))
        assert reply.response.status_code == reason.status
        assert json.loads(reply.response.raw_body) == {"error": reason.message}
        assert reply.response.headers[answers.ANSWER_HEADER] == reason.code
        assert reply.request.return_overrides.response_code == -1


def test_undecodable_payload_answers_bad_request(runtime: Runtime) -> None:
    reply = parse(runtime.dispatch(b"\xff\xff\xff not protobuf"))
    assert reply.request.return_overrides.response_code == Reason.BAD_REQUEST.status


def test_runtime_keeps_serving_after_errors(runtime: Runtime) -> None:
    call(runtime, gateway_object(PRE, "Raises"))
    assert call(runtime, gateway_object(PRE, "TypedPre")).request.set_headers["X-Typed"] == "pre"


# --- logging -----------------------------------------------------------------------


def test_logs_carry_hook_name_and_never_secret_headers(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tykworker")
    headers = {"Authorization": "Bearer s3cr3t-value", "Cookie": "sid=c00kie-value; x=1234"}
    call(runtime, gateway_object(PRE, "LogsSecrets", headers=headers))
    call(runtime, gateway_object(PRE, "Raises", headers=headers))
    records = [r for r in caplog.records if r.name in ("tykworker.plugins", "tykworker.calls")]
    assert {r.hook for r in records} >= {"LogsSecrets", "Raises"}  # type: ignore[attr-defined]
    text = "\n".join(r.getMessage() for r in records)
    assert "token is [redacted]" in text
    assert "boom with [redacted]" in text
    for secret in ("s3cr3t-value", "c00kie-value", "sid=c00kie"):
        assert secret not in text


@pytest.mark.parametrize("name", SECRET_HEADERS)
def test_call_context_redacts_every_secret_header_even_once_removed(name: str) -> None:
    """The context reads the secret values when the call starts (a hook may delete the
    header, then log its value) and splits them only when something is redacted."""
    value = "sid=s3cr3t-value" if name == "Cookie" else "Bearer s3cr3t-value"
    obj = gateway_object(PRE, "X", headers={name: value, "X-Other": "plain"})
    context = CallContext(hook="X", headers=obj.request.headers)
    del obj.request.headers[name]
    text = context.redact(f"saw {value} and s3cr3t-value, kept plain")
    assert "s3cr3t" not in text and "plain" in text
    assert CallContext(headers=obj.request.headers).secrets == ()
    assert CallContext().redact("s3cr3t-value") == "s3cr3t-value"


# --- events ------------------------------------------------------------------------


def event_payload(handler: str, event_type: str = "AuthFailure") -> bytes:
    data = {
        "message": {
            "Type": event_type,
            "Meta": {"Message": "Auth Failure", "Key": "badtoken", "Path": "/my-api/"},
            "TimeStamp": "2026-08-21 12:39:47.123456789 +0000 UTC",
        },
        "handler_name": handler,
        "spec": {"APIID": "api-1", "OrgID": "org-1"},
    }
    return object_pb2.Event(payload=json.dumps(data)).SerializeToString()


def test_dispatch_event_calls_named_handler_with_attribute_access(runtime: Runtime) -> None:
    assert runtime.dispatch_event(event_payload("on_auth_failure")) == b""
    received = runtime.event_handlers.events["on_auth_failure"].f.__globals__["RECEIVED"]
    assert received == [
        ("AuthFailure", "on_auth_failure", "api-1", {"APIID": "api-1", "OrgID": "org-1"})
    ]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (event_payload("failing_handler"), Reason.HOOK_ERROR),
        (event_payload("missing"), Reason.NO_HOOK),
        (b"\xff\xff", Reason.BAD_REQUEST),
        (b"\n\x03{{{", Reason.BAD_REQUEST),
    ],
)
def test_dispatch_event_never_raises_and_names_why_in_the_reply(
    runtime: Runtime, payload: bytes, reason: Reason
) -> None:
    reply = runtime.dispatch_event(payload)
    assert object_pb2.EventReply.FromString(reply).ListFields() == []  # decodes
    assert event_answer(reply) == reason.code == active_call.failure


def test_trigger_event_runs_local_event_handler(runtime: Runtime) -> None:
    call(runtime, gateway_object(PRE, "Triggers"))
    calls = module_global(runtime, "Triggers", "CALLS")
    assert calls[-1] == ("local_event", "payload from api-1", "api-1")


# --- never raises --------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    rt = load_runtime(
        Settings(
            middleware=str(FIXTURES / "conventions"),
            event_handlers=str(FIXTURES / "events"),
            runtime_dir=str(tmp_path_factory.mktemp("run")),
        )
    )
    yield rt
    rt.close()


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=200))
def test_any_payload_gets_a_decodable_reply(shared_runtime: Runtime, payload: bytes) -> None:
    reply = parse(shared_runtime.dispatch(payload))
    assert reply.request.return_overrides.response_code != 0 or reply.hook_type == RESPONSE
    event = shared_runtime.dispatch_event(payload)
    assert object_pb2.EventReply.FromString(event).ListFields() == []
    assert event_answer(event) in {"", Reason.BAD_REQUEST.code, Reason.NO_HOOK.code}


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(["AddHeader", "Raises", "ReturnsNone", "Nope", ""]),
    hook_type=st.sampled_from([PRE, POST, POST_KEY_AUTH, AUTH]),
    body=st.binary(max_size=64),
)
def test_request_hook_replies_always_echo_body_url_and_method(
    shared_runtime: Runtime, name: str, hook_type: int, body: bytes
) -> None:
    sent = gateway_object(hook_type, name, body=body)
    reply = call(shared_runtime, sent)
    assert (reply.request.raw_body, reply.request.url, reply.request.method) == (
        body,
        sent.request.url,
        sent.request.method,
    )


def test_reply_drops_only_the_text_copies_the_gateway_ignores(runtime: Runtime) -> None:
    """``request.body`` and ``response.body`` are never read back by the gateway (only
    ``raw_body``): the reply leaves them out; everything else comes back as the hook left it."""
    sent = gateway_object(PRE, "AddHeader", body=b'{"k": "' + b"x" * 1000 + b'"}')
    assert sent.request.body and sent.request.raw_body
    reply = call(runtime, sent)
    assert reply.request.body == ""
    assert reply.request.raw_body == sent.request.raw_body
    # the hook adds ~70 bytes (a header, a param); the 1 KB text copy is gone
    assert len(reply.SerializeToString()) < len(sent.SerializeToString()) - 900
    assert reply.request.set_headers["X-Added"] == "yes"

    response = gateway_object(RESPONSE, "AppendResponseHeader")
    assert response.response.body
    replied = call(runtime, response)
    assert replied.response.body == ""
    assert replied.response.raw_body.startswith(response.response.raw_body)


# --- replies over max_message_mb ---------------------------------------------------


def test_oversized_reply_echoes_the_request_with_the_plugin_error() -> None:
    sent = gateway_object(PRE, "Big", body=b"abc")
    payload = sent.SerializeToString()
    reply = dispatch.oversized_reply(payload, 10_000, 1000)
    assert len(reply) <= 1000
    assert_error_answer(parse(reply), sent, Reason.HOOK_ERROR)


def test_oversized_reply_of_a_request_at_the_limit_is_the_override_alone() -> None:
    sent = gateway_object(RESPONSE, "Big", body=b"a" * 900)
    payload = sent.SerializeToString()
    reply = dispatch.oversized_reply(payload, 10_000, len(payload))
    assert len(reply) <= len(payload)
    answer = parse(reply)
    assert answer.response.status_code == 500
    assert answer.response.headers[answers.ANSWER_HEADER] == "hook_error"
    assert not answer.request.raw_body
