"""``tykworker call``: arguments -> the gateway's Object, and the reply -> JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.cli import call as callcmd
from tykworker.cli.commands import _parser
from tykworker.cli.objects import NO_BUNDLE, POST_KEY_AUTH, PRE, RESPONSE, canonical_header
from tykworker.config import Settings
from tykworker.errors import ConfigError


def _args(*argv: str):
    return _parser().parse_args(["call", *argv])


def test_pre_hook_object_as_the_gateway_builds_it():
    args = _args(
        "MyHook",
        "--header", "x-api-key: abc:def",
        "--body", "héllo",
        "--method", "post",
        "--url", "/api/items?a=1&b=2&a=3",
        "--spec", "APIID=demo",
        "--spec", "config_data={\"k\": 1}",
    )  # fmt: skip
    obj = callcmd.build_object(args)
    assert (obj.hook_type, obj.hook_name) == (PRE, "MyHook")
    req = obj.request
    assert req.headers["X-Api-Key"] == "abc:def" and req.headers["Host"]
    url = "/api/items?a=1&b=2&a=3"
    assert (req.method, req.url, req.request_uri) == ("POST", url, url)
    assert dict(req.params) == {"a": "1", "b": "2"}  # first value only
    assert req.raw_body == "héllo".encode() and req.body == "héllo"
    assert req.return_overrides.response_code == -1
    assert obj.spec["APIID"] == "demo" and obj.spec["bundle_hash"] == NO_BUNDLE
    assert json.loads(obj.spec["config_data"]) == {"k": 1}
    assert not obj.HasField("session") and not obj.HasField("response")


def test_hook_types_get_sessions_and_responses_like_the_gateway():
    assert callcmd.build_object(_args("H", "--type", "auth")).HasField("session") is False
    post_key_auth = callcmd.build_object(_args("H", "--type", "post_key_auth"))
    assert post_key_auth.hook_type == POST_KEY_AUTH
    assert post_key_auth.session.metadata["token"] and post_key_auth.metadata["token"]
    response = callcmd.build_object(_args("H", "--type", "response"))
    assert response.hook_type == RESPONSE and response.HasField("session")
    assert response.response.status_code == 200


def test_body_file(tmp_path: Path):
    data = bytes(range(256))
    (tmp_path / "body").write_bytes(data)
    obj = callcmd.build_object(_args("H", "--body-file", str(tmp_path / "body")))
    assert obj.request.raw_body == data and obj.request.body == ""  # not UTF-8: no text copy
    with pytest.raises(ConfigError, match="cannot read"):
        callcmd.build_object(_args("H", "--body-file", str(tmp_path / "missing")))


@pytest.mark.parametrize("bad", [["--header", "NoColon"], ["--spec", "novalue"]])
def test_malformed_pairs_are_usage_errors(bad):
    with pytest.raises(ConfigError, match="expected NAME"):
        callcmd.build_object(_args("H", *bad))


def test_event_payload():
    event = callcmd.build_event(_args("Handler", "--event", '{"Type": "AuthFailure"}'))
    payload = json.loads(event.payload)
    assert payload["handler_name"] == "Handler"
    assert payload["message"] == {"Type": "AuthFailure"}
    assert payload["spec"]["APIID"] == "api-1"
    with pytest.raises(ConfigError):
        callcmd.build_event(_args("Handler", "--event", "[1]"))
    with pytest.raises(ConfigError):
        callcmd.build_event(_args("Handler", "--event", "{"))


def test_json_shows_utf8_bytes_as_text_and_others_as_base64():
    obj = object_pb2.Object(hook_name="H")
    obj.request.raw_body = b"text body"
    obj.response.raw_body = b"\xff\x00"
    obj.session.access_rights["api"].api_name = "x"
    doc = callcmd.to_json(obj)
    assert doc["request"]["raw_body"] == "text body"
    assert doc["response"]["raw_body"] == "/wA="
    assert doc["session"]["access_rights"]["api"]["api_name"] == "x"


def test_canonical_header():
    assert canonical_header("x-API-key") == "X-Api-Key"
    assert canonical_header("authorization") == "Authorization"


def test_grpc_target():
    assert callcmd.target(Settings(socket="/run/tyk.sock")) == "unix:/run/tyk.sock"
    assert callcmd.target(Settings(socket="unix://rel.sock")) == "unix:rel.sock"
    assert callcmd.target(Settings(socket="tcp://127.0.0.1:5555")) == "127.0.0.1:5555"


def test_response_headers_are_synchronised_as_the_gateway_does():
    from tykworker.cli.objects import DEFAULT_RESPONSE, gateway_object, sync_response_headers

    sent = gateway_object(RESPONSE, "H", response=DEFAULT_RESPONSE).response

    def after(edit) -> dict[str, list[str]]:
        reply = type(sent)()
        reply.CopyFrom(sent)
        edit(reply)
        sync_response_headers(sent.headers, reply)
        return {h.key: list(h.values) for h in reply.multivalue_headers}

    untouched = {"Content-Type": ["text/plain"], "Set-Cookie": ["a=1", "b=2"]}
    assert after(lambda r: None) == untouched
    # only multivalue_headers edited: used as returned
    assert after(lambda r: r.multivalue_headers.add(key="X-M", values=["1", "2"])) == {
        **untouched,
        "X-M": ["1", "2"],
    }

    # headers edited: changed/added names get one value, removed names are dropped,
    # unchanged names keep all their values
    def edit(r):
        r.headers["X-New"] = "n"
        del r.headers["Content-Type"]

    assert after(edit) == {"Set-Cookie": ["a=1", "b=2"], "X-New": ["n"]}
    assert after(lambda r: r.headers.__setitem__("Set-Cookie", "c=3")) == {
        "Content-Type": ["text/plain"],
        "Set-Cookie": ["c=3"],
    }
