"""Bundles downloaded and unpacked by the gateway, run by tykworker (no restart)."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import Stack
from tests.gateway.harness import api, bundle_zip

pytestmark = pytest.mark.gateway


def code(value: str) -> str:
    return (
        "from tyk.decorators import Hook\n\n\n"
        "@Hook\n"
        f"def BundlePre{value}(request, session, spec):\n"
        f'    request.add_header("X-Bundle", "{value}")\n'
        "    return request, session\n"
    )


def publish(stack, name: str, value: str) -> None:
    middleware = {"driver": "grpc", "pre": [{"name": f"BundlePre{value}"}]}
    stack.upstream.files[name] = bundle_zip({f"entry_{value}.py": code(value)}, middleware)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_single_bundle_and_a_new_version(stack, version):
    name = f"single-{version}.zip"
    publish(stack, name, version)
    target = stack.upstream.url + "/bundled/"
    stack.gateway.put_apis(api("bundled", "/bundled/", target, custom_middleware_bundle=name))
    stack.gateway.reload_until(
        lambda: (
            stack.get("/bundled/x").status == 200
            and stack.upstream.last("/bundled/").headers.get("x-bundle") == version
        ),
        what=f"bundle {name} served",
    )


def test_two_bundles_merged_by_the_gateway(stack: Stack):
    publish(stack, "first.zip", "First")
    publish(stack, "second.zip", "Second")
    target = stack.upstream.url + "/pair/"
    stack.gateway.put_apis(
        api("pair", "/pair/", target, custom_middleware_bundle="first.zip,second.zip")
    )
    answer = None

    def served() -> bool:
        nonlocal answer
        answer = stack.get("/pair/x")
        return answer.status == 200

    stack.gateway.reload_until(served, what="merged bundles served", timeout=20)
    seen = stack.upstream.last("/pair/")
    assert seen.headers.get("x-bundle") == "Second"  # both parts ran, in the merged order
