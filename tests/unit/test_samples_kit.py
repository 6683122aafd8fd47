"""The repository's sample plugins (``middleware/``, ``event_handlers/``) through the test
kit (``tykworker.testing``), in-process: what docs/plugins.md's sample table promises."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tykworker.testing import HookRunner, answered_by_tykworker, make_object

pytest_plugins = ["tykworker.testing.pytest_plugin"]

ROOT = Path(__file__).resolve().parents[2]
VALID_KEY = "47a0c79c427728b3df4af62b9ed4f2a5"


@pytest.fixture
def samples():
    with HookRunner(ROOT / "middleware", ROOT / "event_handlers") as runner:
        yield runner


def test_pre_and_post_samples_set_headers(samples, caplog):
    caplog.set_level(logging.INFO, "tykworker.plugins")
    pre = samples.call("MyPreMiddleware", make_object("pre", url="/things?x=1"))
    assert pre.request.set_headers["Myheader"] == "Myvalue"
    assert "MyPreMiddleware: GET /things?x=1" in caplog.text
    post = samples.call("MyPostMiddleware", make_object("post"))
    assert post.request.set_headers["Mypostheader"] == "Mypostvalue"
    assert answered_by_tykworker(post) == "" and samples.last_failure == ""


def test_auth_sample_accepts_its_key_and_rejects_others(samples, caplog):
    ok = samples.call("MyAuthCheck", make_object("auth", headers={"Authorization": VALID_KEY}))
    assert ok.session.metadata["token"] == VALID_KEY
    assert (ok.session.rate, ok.session.quota_max) == (1000.0, 100000)
    assert ok.request.return_overrides.response_code == -1
    bad = samples.call("MyAuthCheck", make_object("auth", headers={"authorization": "nope"}))
    assert bad.request.return_overrides.response_code == 403
    assert bad.request.return_overrides.response_error == "Access denied"
    assert "token" not in bad.session.metadata
    assert "nope" not in caplog.text  # the plugin log line is redacted as in a worker


def test_response_sample_adds_a_header_and_keeps_the_upstream_answer(samples):
    upstream = {"status": 201, "headers": {"content-type": "application/json"}, "body": b"{}"}
    reply = samples.call("AppendHeader", make_object("response", response=upstream))
    assert reply.response.headers["Myresponseheader"] == "Myresponsevalue"
    assert reply.response.headers["Content-Type"] == "application/json"
    assert (reply.response.status_code, reply.response.raw_body) == (201, b"{}")


def test_counter_sample_counts_in_the_store(samples):
    obj = make_object("pre", spec={"APIID": "demo"})
    counts = [samples.call("SetKeyOnRequest", obj).request.set_headers["X-Request-Count"]]
    counts.append(samples.call("SetKeyOnRequest", obj).request.set_headers["X-Request-Count"])
    assert counts == ["1", "2"]
    assert samples.get_data("request-count-demo") == b"2"


def test_a_fresh_runner_has_a_fresh_store():
    with HookRunner(ROOT / "middleware") as first, HookRunner(ROOT / "middleware") as second:
        first.store_data("request-count-api-1", "41")
        reply = first.call("SetKeyOnRequest", make_object("pre"))
        assert reply.request.set_headers["X-Request-Count"] == "42"
        reply = second.call("SetKeyOnRequest", make_object("pre"))
        assert reply.request.set_headers["X-Request-Count"] == "1"


def test_event_sample_runs_and_unknown_handlers_are_reported(samples, caplog):
    caplog.set_level(logging.INFO, "tykworker.plugins")
    event = {"Type": "AuthFailure", "Meta": {"Message": "Auth Failure", "Key": "k1"}}
    assert samples.event("my_handler", event) == ""
    assert "my_handler: AuthFailure on API api-1 (Auth Failure)" in caplog.text
    assert samples.event("no_such_handler", event) == "no_hook"
    assert samples.event_handlers == ["my_handler"]


def test_unknown_hook_gets_the_workers_answer(samples):
    sent = make_object("pre")
    reply = samples.call("NoSuchHook", sent)
    assert samples.last_failure == "no_hook" and answered_by_tykworker(reply) == "no_hook"
    assert reply.request.return_overrides.response_code == 500
    assert sent.hook_name == ""  # the caller's Object is left as it was


def test_the_tyk_hooks_fixture_serves_the_option_folders(tyk_hooks, request):
    # This run's options name no folders: the fixture reads ./middleware of the invocation
    # directory, which for the project's own runs is the repository root.
    if Path(request.config.invocation_params.dir).resolve() != ROOT:
        pytest.skip("run from the repository root")
    assert "MyPreMiddleware" in tyk_hooks.hooks
