"""Capture and replay of real gateway calls: ``serve --capture`` behind a stock Tyk gateway
records what the gateway really sends for each hook kind (the key redacted), and each
capture replays: in-process with ``tykworker.testing`` and through ``tykworker call``."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.gateway.test_hooks import HOOKED
from tests.integration.conftest import wait_for
from tykworker.testing import HookRunner, make_object

pytestmark = pytest.mark.gateway

HERE = Path(__file__).parent
KINDS = {"GwPre": 1, "GwAuth": 4, "GwPostKeyAuth": 3, "GwPost": 2, "GwResponse": 5}


@pytest.fixture(scope="module")
def capturing(stack):
    folder = stack.folder / "captures"
    stack.server_args += ["--capture", str(folder)]
    stack.restart_server()
    definition = copy.deepcopy(HOOKED)
    definition["proxy"]["target_url"] = stack.upstream.url + "/up/"
    stack.gateway.put_apis(definition)
    return stack, folder


def by_hook(folder: Path) -> dict[str, Path]:
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return {json.loads(p.read_text())["hook_name"]: p for p in files}


def test_gateway_calls_are_captured_redacted_and_replay(capturing):
    stack, folder = capturing
    secret = f"good-{uuid.uuid4().hex}"
    answer = stack.get(
        "/hooked/things?x=1", method="POST", body=b"a body", headers={"Authorization": secret}
    )
    assert answer.status == 200, answer
    files = wait_for(lambda: set(by_hook(folder)) >= set(KINDS) and by_hook(folder))
    for hook, path in files.items():
        assert secret not in path.read_text(), hook  # nor its parts (the session's token)
    with HookRunner(HERE / "plugins", HERE / "events") as runner:
        for hook, number in KINDS.items():
            sent = make_object(from_file=files[hook], headers={"Authorization": secret})
            assert sent.hook_type == number and sent.spec["APIID"] == "hooked"
            reply = runner.call(hook, sent)
            assert runner.last_failure == "", hook
            if hook == "GwAuth":
                assert reply.session.metadata["token"] == secret
            if hook == "GwResponse":
                assert reply.response.headers["X-Response"] == "response-ran"
                assert reply.response.status_code == sent.response.status_code == 200
    assert json.loads(make_object(from_file=files["GwPost"]).spec["config_data"]) == {
        "greeting": "hello from config_data"
    }
    argv = ["call", "--object-file", str(files["GwPre"]), "--socket", stack.server.socket]
    replay = subprocess.run(
        [sys.executable, "-m", "tykworker", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["request"]["set_headers"]["X-Pre"] == "pre-ran"
