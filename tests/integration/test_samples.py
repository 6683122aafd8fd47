"""The repository's sample plugins through the real server, and the gateway store shared
by workers (embedded store and a real redis-server)."""

from __future__ import annotations

import threading

import pytest
import redis

from .conftest import ROOT, make_object, wait_for

pytestmark = pytest.mark.integration

VALID_KEY = "47a0c79c427728b3df4af62b9ed4f2a5"


@pytest.fixture
def samples(start_server):
    return start_server(
        "--workers", "2", plugins=ROOT / "middleware", events=ROOT / "event_handlers"
    )


def test_pre_and_post_samples_set_headers(samples):
    pre = samples.dispatch("MyPreMiddleware")
    assert pre.request.set_headers["Myheader"] == "Myvalue"
    post = samples.dispatch("MyPostMiddleware", hook_type="post")
    assert post.request.set_headers["Mypostheader"] == "Mypostvalue"
    assert "MyPreMiddleware: GET /api/things?x=1" in samples.log()


def test_auth_sample_accepts_the_key_and_rejects_others(samples):
    ok = samples.dispatch("MyAuthCheck", hook_type="auth", headers={"Authorization": VALID_KEY})
    assert ok.session.metadata["token"] == VALID_KEY
    assert ok.session.rate == 1000.0
    assert ok.request.return_overrides.response_code == -1
    bad = samples.dispatch("MyAuthCheck", hook_type="auth", headers={"Authorization": "nope"})
    assert bad.request.return_overrides.response_code == 403
    assert bad.request.return_overrides.response_error == "Access denied"
    assert "nope" not in samples.log()


def test_auth_with_empty_hook_name_is_refused_not_guessed(samples):
    # middleware/ holds exactly one 4-argument hook (MyAuthCheck): it must not run.
    reply = samples.dispatch("", hook_type="auth", headers={"Authorization": VALID_KEY})
    assert "token" not in reply.session.metadata
    assert reply.request.return_overrides.response_code == 403


def test_response_sample_adds_a_response_header(samples):
    reply = samples.dispatch("AppendHeader", hook_type="response")
    assert reply.response.headers["Myresponseheader"] == "Myresponsevalue"
    assert reply.response.status_code == 200
    sent = make_object("AppendHeader", hook_type="response")
    assert reply.response.raw_body == sent.response.raw_body


def test_counter_sample_counts_across_workers(samples):
    counts = [
        int(samples.dispatch("SetKeyOnRequest").request.set_headers["X-Request-Count"])
        for _ in range(6)
    ]
    assert counts == [1, 2, 3, 4, 5, 6]


def test_event_sample_is_called(samples):
    samples.event(
        '{"message": {"Type": "AuthFailure", "Meta": {"Message": "Auth Failure", "Key": "k1"},'
        ' "TimeStamp": "t"}, "handler_name": "my_handler", "spec": {"APIID": "a9", "OrgID": "o"}}'
    )
    assert "my_handler: AuthFailure on API a9 (Auth Failure)" in samples.log()


def _store_across_workers(server) -> None:
    """A value written by one worker is read by another while the writer is busy."""
    written: dict[str, object] = {}

    def write() -> None:
        written["reply"] = server.dispatch(
            "Store", method="PUT", headers={"Key": "shared", "Hold": "2"}, body=b"v1"
        )

    thread = threading.Thread(target=write)
    thread.start()
    reply = wait_for(
        lambda: (
            (r := server.dispatch("Store", headers={"Key": "shared"})).request.set_headers[
                "X-Value"
            ]
            == "v1"
            and r
        ),
        what="value visible to the other worker",
    )
    thread.join(30)
    writer_pid = written["reply"].request.set_headers["X-Worker-Pid"]  # type: ignore[attr-defined]
    assert reply.request.set_headers["X-Worker-Pid"] != writer_pid


def test_embedded_store_is_shared_by_workers_and_survives_restarts(start_server):
    server = start_server("--workers", "2")
    _store_across_workers(server)
    server.dispatch("Exit")  # kill one worker; the store is a file, not worker memory
    reply = server.dispatch("Store", headers={"Key": "shared"})
    assert reply.request.set_headers["X-Value"] == "v1"


@pytest.mark.redis
def test_redis_store_uses_tyk_keys(start_server, redis_url):
    server = start_server("--workers", "2", "--redis-url", redis_url)
    _store_across_workers(server)
    client = redis.Redis.from_url(redis_url)
    assert client.get("coprocess-data:shared") == b"v1"
    assert 0 < client.ttl("coprocess-data:shared") <= 60
    client.set("coprocess-data:from-gateway", "hello")
    reply = server.dispatch("Store", headers={"Key": "from-gateway"})
    assert reply.request.set_headers["X-Value"] == "hello"
