"""Capture and replay through the real server: ``serve --capture DIR`` writes what each call
received (secrets redacted, bounded), ``tykworker call --object-file`` sends a capture back,
and ``tykworker.testing`` turns it into a regression test in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tykworker.testing import HookRunner, make_object

from .conftest import PLUGINS, wait_for

pytestmark = pytest.mark.integration

SECRET = "tok-secret-123"


def captures(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def test_capture_then_replay_with_the_cli_and_the_kit(start_server, workdir):
    folder = workdir / "captures"
    server = start_server("--workers", "2", "--capture", str(folder), "--capture-max-files", "3")
    headers = {"Authorization": f"Bearer {SECRET}", "Cookie": "sid=cookie-secret-9", "X-N": "1"}
    for n in range(5):
        headers["X-N"] = str(n)
        reply = server.dispatch("Echo", headers=headers, body=b"payload")
        assert reply.request.set_headers["X-Version"] == "1"  # capture never changes answers
    files = wait_for(lambda: len(captures(folder)) == 3 and captures(folder), what="3 captures")
    text = "".join(p.read_text() for p in files)
    assert SECRET not in text and "cookie-secret-9" not in text
    assert "[redacted]" in text
    # bounded: the later calls were not written (they were still answered above)
    seen = sorted(json.loads(p.read_text())["request"]["headers"]["X-N"] for p in files)
    assert len(seen) == 3 and set(seen) <= {"0", "1", "2", "3", "4"}

    argv = ["call", "--object-file", str(files[0]), "--socket", server.socket]
    replay = subprocess.run(
        [sys.executable, "-m", "tykworker", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr
    doc = json.loads(replay.stdout)
    assert doc["hook_name"] == "Echo" and doc["request"]["set_headers"]["X-Version"] == "1"
    assert doc["request"]["raw_body"] == "payload"
    assert doc["request"]["headers"]["Authorization"] == "[redacted]"

    # The same capture as an in-process regression test, changed where the test says so.
    with HookRunner(PLUGINS) as runner:
        obj = make_object(from_file=files[0], headers={"X-Extra": "yes"})
        assert obj.request.headers["X-Extra"] == "yes" and obj.request.raw_body == b"payload"
        local = runner.call(obj.hook_name, obj)
    assert local.request.set_headers["X-Version"] == "1"
