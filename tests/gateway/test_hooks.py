"""Every hook kind on one API through the real gateway."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.gateway.harness import api
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.gateway

HOOKED = api(
    "hooked",
    "/hooked/",
    "",
    use_keyless=False,
    custom_plugin_auth_enabled=True,
    config_data={"greeting": "hello from config_data"},
    custom_middleware={
        "driver": "grpc",
        "pre": [{"name": "GwPre"}],
        "auth_check": {"name": "GwAuth"},
        "post_key_auth": [{"name": "GwPostKeyAuth"}],
        "post": [{"name": "GwPost"}],
        "response": [{"name": "GwResponse"}],
    },
    event_handlers={
        "events": {
            "AuthFailure": [
                {"handler_name": "cp_dynamic_handler", "handler_meta": {"name": "gw_auth_failure"}}
            ]
        }
    },
)

#: The same auth hook, but its AuthFailure handler does not exist in tykworker.
UNHANDLED = json.loads(json.dumps(HOOKED))
UNHANDLED.update(api_id="unhandled", name="unhandled")
UNHANDLED["proxy"]["listen_path"] = "/unhandled/"
UNHANDLED["event_handlers"]["events"]["AuthFailure"][0]["handler_meta"]["name"] = "gw_missing"


@pytest.fixture(scope="module")
def hooked(stack):
    for definition in (HOOKED, UNHANDLED):
        definition["proxy"]["target_url"] = stack.upstream.url + "/up/"
    stack.gateway.put_apis(HOOKED, UNHANDLED)
    return stack


def key(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def test_every_hook_kind_reaches_the_upstream(hooked):
    answer = hooked.get(
        "/hooked/things?x=1&drop=me",
        method="POST",
        body=b"lower body",
        headers={"Authorization": key("good"), "X-Drop-Me": "1", "X-Upper-Body": "1"},
    )
    assert answer.status == 200, answer
    assert answer.headers["X-Response"] == "response-ran"
    seen = hooked.upstream.last("/up/things")
    assert seen.method == "POST"
    assert seen.query == {"x": ["1"], "added": ["by-pre"]}
    assert seen.body == b"LOWER BODY"
    assert seen.headers["x-pre"] == "pre-ran"
    assert "x-drop-me" not in seen.headers
    assert seen.headers["x-post-key-auth"] == "gold"  # metadata returned by the auth hook
    assert seen.headers["x-post"] == "post-ran"
    assert seen.headers["x-config"] == "hello from config_data"
    assert seen.headers["x-api-id"] == "hooked"


def test_url_and_method_rewrites(hooked):
    answer = hooked.get(
        "/hooked/original",
        headers={
            "Authorization": key("good"),
            "X-Rewrite-Url": "/rewritten/path",
            "X-Rewrite-Method": "PUT",
        },
    )
    assert answer.status == 200, answer
    seen = hooked.upstream.last("/up/rewritten")
    assert seen.path == "/up/rewritten/path"
    assert seen.method == "PUT"


def test_return_overrides_as_the_gateway_renders_them(hooked):
    answer = hooked.get("/hooked/x", headers={"Authorization": key("good"), "X-Override": "1"})
    assert answer.status == 418
    assert answer.headers.get("X-Teapot") == "yes"
    assert b"short and stout" in answer.body


def test_response_hook_changes_status_headers_body(hooked):
    answer = hooked.get(
        "/hooked/x", headers={"Authorization": key("good"), "X-Teapot-Response": "1"}
    )
    assert answer.status == 201
    assert answer.body == b"rewritten by the response hook"
    assert answer.headers["Content-Type"] == "text/plain"


def test_invalid_key_is_refused_and_fires_the_event_handler(hooked):
    before = len(hooked.events_file.read_text().splitlines())
    answer = hooked.get("/hooked/x", headers={"Authorization": "bogus"})
    assert answer.status == 403
    assert json.loads(answer.body) == {"error": "Access denied"}

    def new_events():
        return hooked.events_file.read_text().splitlines()[before:]

    record = json.loads(wait_for(new_events, 20, "AuthFailure event")[0])
    assert record["type"] == "AuthFailure"
    assert record["handler_name"] == "gw_auth_failure"
    assert record["spec"]["APIID"] == "hooked"
    assert record["message"]["Meta"]["Message"]


def test_rate_limit_from_the_returned_session(hooked):
    headers = {"Authorization": key("rate")}
    codes = [hooked.get("/hooked/r", headers=headers).status for _ in range(4)]
    assert codes[:2] == [200, 200]
    assert codes[2:] == [429, 429]


def test_quota_from_the_returned_session(hooked):
    headers = {"Authorization": key("quota")}
    codes = [hooked.get("/hooked/q", headers=headers).status for _ in range(4)]
    assert codes[:2] == [200, 200]
    assert codes[2:] == [403, 403]


def test_auth_without_a_hook_name_is_refused_and_a_missing_one_never_passes(stack):
    common = {"use_keyless": False, "custom_plugin_auth_enabled": True}
    unnamed = api(
        "unnamed-auth",
        "/unnamed/",
        stack.upstream.url + "/unnamed/",
        custom_middleware={"driver": "grpc", "auth_check": {"name": ""}},
        **common,
    )
    missing = api(
        "missing-auth",
        "/missing/",
        stack.upstream.url + "/missing/",
        custom_middleware={"driver": "grpc", "auth_check": {"name": "NoSuchAuthHook"}},
        **common,
    )
    stack.gateway.put_apis(unnamed, missing)
    # plugins/ holds exactly one 4-argument hook (GwAuth) that would accept "good-*".
    answer = stack.get("/unnamed/x", headers={"Authorization": key("good")})
    assert answer.status == 403
    assert answer.headers.get("X-Tykworker-Error") == "no_hook"
    answer = stack.get("/missing/x", headers={"Authorization": key("good")})
    assert answer.status == 500
    assert json.loads(answer.body) == {"error": "Plugin hook not found"}
    assert not [s for s in stack.upstream.seen if s.path.startswith(("/unnamed", "/missing"))]


def test_unknown_event_handler_is_reported_and_its_reply_accepted(hooked):
    # tykworker answers an unknown handler with an EventReply carrying the reason in an
    # undeclared field: the gateway's decoder must skip it (no unmarshal error logged).
    answer = hooked.get("/unhandled/x", headers={"Authorization": "bogus"})
    assert answer.status == 403
    wait_for(lambda: "no @Event handler 'gw_missing'" in hooked.server.log(), 20, "no_hook logged")
    answer = hooked.get("/hooked/x", headers={"Authorization": "bogus"})  # still served
    assert answer.status == 403
    assert "unmarshal" not in hooked.gateway.log()
