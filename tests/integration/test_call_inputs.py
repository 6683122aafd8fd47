"""``tykworker call`` shapes every input a hook can get (issue 14 item 12), through the real
CLI against the real server: the upstream response of a Response hook, the session and its
metadata, config_data; and the printed reply shows headers as the gateway applies them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server

pytestmark = pytest.mark.integration


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tykworker", "call", *args, "--socket", server.socket],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=server.workdir,
        check=False,
    )


def reply_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    return start_server("--workers", "1")


def multivalue(response: dict[str, Any]) -> dict[str, list[str]]:
    return {h["key"]: h["values"] for h in response.get("multivalue_headers", [])}


def test_response_hook_gets_the_upstream_response_session_metadata_config(server, workdir):
    (workdir / "upstream.bin").write_bytes(b'{"id": 7}')
    (workdir / "session.json").write_text(json.dumps({"rate": 9, "metadata": {"user": "ann"}}))
    reply = reply_of(
        cli(
            server, "ReportResponse", "--type", "response",
            "--status", "201",
            "--response-header", "set-cookie: a=1", "--response-header", "Set-Cookie: b=2",
            "--response-header", "Content-Type: text/plain",
            "--response-body-file", str(workdir / "upstream.bin"),
            "--session-file", str(workdir / "session.json"),
            "--metadata", "plan=gold",
            "--config-data", '{"limit": 3}',
        )
    )  # fmt: skip
    headers = reply["response"]["headers"]
    assert headers["X-Seen-Status"] == "201" and headers["X-Seen-Body"] == '{"id": 7}'
    assert headers["X-Seen-Cookies"] == "a=1,b=2"
    assert headers["X-Seen-Rate"] == "9.0"
    assert headers["X-Seen-Metadata"] == "plan=gold,user=ann"
    assert json.loads(headers["X-Seen-Config"]) == {"limit": 3}
    assert reply["response"]["status_code"] == 201
    # Printed as the gateway applies the reply: headers added or changed in `headers` show
    # in multivalue_headers too, and Set-Cookie, removed from `headers`, is gone from both.
    shown = multivalue(reply["response"])
    assert "Set-Cookie" not in headers and "Set-Cookie" not in shown
    assert shown["Content-Type"] == ["application/json"]
    assert shown["X-Seen-Status"] == ["201"]
    assert set(shown) == set(headers)


def test_raw_prints_the_reply_as_received(server):
    reply = reply_of(cli(server, "ReportResponse", "--type", "response", "--raw"))
    shown = multivalue(reply["response"])
    assert shown["Set-Cookie"] == ["a=1", "b=2"]  # the hook edited only `headers`
    assert "X-Seen-Status" not in shown


def test_post_hook_gets_the_session_json_and_metadata(server):
    session = json.dumps({"rate": 4, "per": 1, "metadata": {"token": "t-1"}})
    reply = reply_of(
        cli(
            server, "ReportSession", "--type", "post", "--session", session,
            "--metadata", "tier=free", "--config-data", '{"a": 1}', "--url", "/x?y=1",
        )
    )  # fmt: skip
    set_headers = reply["request"]["set_headers"]
    assert set_headers["X-Seen-Rate"] == "4.0"
    assert set_headers["X-Seen-Metadata"] == "tier=free,token=t-1"
    assert json.loads(set_headers["X-Seen-Config"]) == {"a": 1}
    assert set_headers["X-Seen-Path"] == "/x?y=1"


def test_default_session_of_a_post_hook_takes_extra_metadata(server):
    reply = reply_of(cli(server, "ReportSession", "--type", "post", "--metadata", "k=v"))
    assert reply["request"]["set_headers"]["X-Seen-Metadata"] == "k=v,token=tok-1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--type", "pre", "--session", "{}"], "sends no session to pre hooks"),
        (["--type", "auth", "--metadata", "a=b"], "sends no session to auth hooks"),
        (["--type", "post", "--status", "201"], "only response hooks get the upstream"),
        (["--type", "response", "--session", "[1]"], "must be a JSON object"),
        (["--type", "response", "--session", '{"nope": 1}'], 'no field named "nope"'),
        (["--type", "response", "--status", "42"], "HTTP status code"),
        (["--config-data", "{"], "--config-data is not JSON"),
        (["--type", "response", "--response-header", "NoColon"], "expected NAME:VALUE"),
        (["--type", "response", "--response-body-file", "/nonexistent"], "cannot read"),
    ],
)
def test_shapes_the_gateway_never_sends_are_usage_errors(server, args, message):
    done = cli(server, "ReportSession", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and done.stdout == ""


def test_hook_name_is_required_without_an_object_file(server):
    done = cli(server)
    assert done.returncode == 2 and "HOOK is required" in done.stderr


def test_the_cli_and_the_kit_build_the_same_object(workdir: Path):
    """One builder: ``tykworker call``'s Object equals ``make_object``'s for the same input."""
    from tykworker.cli import call
    from tykworker.cli.commands import _parser
    from tykworker.testing import make_object

    argv = ["call", "H", "--type", "response", "--status", "204", "--header", "x-a: 1"]
    argv += ["--response-header", "x-b: 2", "--metadata", "m=1", "--url", "/p?q=1"]
    built = call.build_object(_parser().parse_args(argv))
    kit = make_object(
        "response",
        "H",
        headers={"x-a": "1"},
        url="/p?q=1",
        metadata={"m": "1"},
        response={"status": 204, "headers": {"x-b": ["2"]}},
    )
    assert built == kit


def test_a_request_hook_editing_the_ignored_headers_map_gets_a_note(server):
    done = cli(server, "EditHeadersMap")
    assert reply_of(done)["request"]["headers"]["X-Ignored"] == "yes"
    assert "changed request.headers, which the gateway ignores" in done.stderr
    quiet = cli(server, "ReportSession", "--type", "post")
    assert quiet.returncode == 0 and "request.headers" not in quiet.stderr
