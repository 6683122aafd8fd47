"""Bodies through the gateway and tykworker: binary byte-exact both ways, and 20 MiB."""

from __future__ import annotations

import os

import pytest

from tests.gateway.harness import api

pytestmark = pytest.mark.gateway


@pytest.fixture(scope="module")
def echo(stack):
    stack.gateway.put_apis(
        api(
            "echo",
            "/echo/",
            stack.upstream.url + "/echo/",
            custom_middleware={
                "driver": "grpc",
                "pre": [{"name": "GwEcho"}],
                "post": [{"name": "GwEcho"}],
            },
        )
    )
    return stack


@pytest.mark.parametrize("size", [256, 20 * 1024 * 1024], ids=["binary", "20MiB"])
def test_body_is_byte_exact_both_ways(echo, size):
    body = bytes(range(256)) * (size // 256) if size == 256 else os.urandom(size)
    answer = echo.get("/echo/data", method="POST", body=body, timeout=60)
    assert answer.status == 200, answer.body[:200]
    assert echo.upstream.last("/echo/data").body == body
    assert answer.body == body
