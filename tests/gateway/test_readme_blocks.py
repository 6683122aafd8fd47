"""The README's own blocks, pasted: its ``tyk.conf`` and demo API definition start a stock
gateway in front of ``tykworker serve`` with the samples, and the demo API answers with and
without the sample auth hook's valid key.

Only the socket path, ports and folders are filled in; every other key is the README's.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.harness import ERROR_TEMPLATE, Gateway, Upstream, free_port, http, redis_parts
from tests.integration.conftest import ROOT, Server, wait_for

README = ROOT / "README.md"


def readme_json_blocks() -> list[dict[str, Any]]:
    """The JSON blocks of the README section on pointing a gateway at tykworker."""
    text = README.read_text()
    section = text[text.index("## Pointing a Tyk gateway at it") :]
    section = section[: section.index("\n## ", 1)]
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.S)]


def test_readme_blocks_parse_and_use_the_unit_socket() -> None:
    conf, demo = readme_json_blocks()[:2]
    assert conf["coprocess_options"]["coprocess_grpc_server"] == "unix:///run/tykworker/tyk.sock"
    unit = (ROOT / "systemd" / "tykworker.service").read_text()
    assert "--socket /run/tykworker/tyk.sock" in unit
    for key in ("listen_port", "secret", "template_path", "app_path", "storage"):
        assert key in conf, key
    assert demo["custom_middleware"]["auth_check"]["name"] == "MyAuthCheck"


@pytest.fixture
def pasted(
    tmp_path: Path, gateway_binary: str, redis_url: str, upstream: Upstream
) -> Iterator[tuple[Gateway, Server]]:
    conf, demo = readme_json_blocks()[:2]
    server = Server(
        tmp_path,
        [
            "--middleware",
            str(ROOT / "middleware"),
            "--event-handlers",
            str(ROOT / "event_handlers"),
            "--workers",
            "1",
        ],
    ).wait_ready()
    gw = tmp_path / "gw"
    for name in ("templates", "apps", "middleware"):
        (gw / name).mkdir(parents=True)
    (gw / "templates" / "error.json").write_text(ERROR_TEMPLATE)
    conf.update(
        listen_port=free_port(),
        template_path=str(gw / "templates"),
        app_path=str(gw / "apps"),
        middleware_path=str(gw / "middleware"),
        pid_file_location=str(gw / "tyk.pid"),
        storage={**conf["storage"], **redis_parts(redis_url)},
    )
    conf["coprocess_options"]["coprocess_grpc_server"] = "unix://" + server.socket
    demo["proxy"]["target_url"] = upstream.url + "/"
    (gw / "apps" / "demo.json").write_text(json.dumps(demo))
    gateway = Gateway(gateway_binary, gw, conf).wait_up()
    try:
        yield gateway, server
    finally:
        gateway.stop()
        server.stop()
        shutil.rmtree(gw, ignore_errors=True)


def test_readme_blocks_start_a_gateway_that_serves_the_samples(
    pasted: tuple[Gateway, Server], upstream: Upstream
) -> None:
    gateway, _ = pasted
    key = re.search(r'-H "Authorization:\s+(\w+)"', README.read_text(), re.S)
    assert key is not None
    valid = {"Authorization": key[1]}
    routed = lambda: http(gateway.url + "/demo/things", headers=valid).status != 404  # noqa: E731
    wait_for(routed, what="the demo API loaded")
    ok = http(gateway.url + "/demo/things", headers=valid)
    assert ok.status == 200, ok.body
    seen = upstream.last("/things")
    assert seen.headers.get("myheader") == "Myvalue"  # the sample Pre hook ran
    assert seen.headers.get("mypostheader") == "Mypostvalue"  # and the Post hook
    denied = http(gateway.url + "/demo/things", headers={"Authorization": "wrong"})
    assert denied.status == 403
    assert b"Access denied" in denied.body
