"""``serve --reload`` (development) on the real server: a saved change rolls a reload, code
that does not import is logged with its file and line while the last good code keeps
serving, and nothing is retried until the next save (no crash loop)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import Server, wait_for

pytestmark = pytest.mark.integration

PLUGIN = """
from tyk.decorators import *


@Hook
def Version(request, session, spec):
    request.add_header("X-Version", "{version}")
    return request, session
"""


def version(server: Server) -> str:
    return server.dispatch("Version").request.set_headers["X-Version"]


def reload_counts(server: Server) -> tuple[int, int]:
    done = subprocess.run(
        [sys.executable, "-m", "tykworker", "status", "--json", "--socket", server.socket],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    return doc["server"]["reloads"], doc["server"]["reload_failures"]


def test_saved_changes_reload_and_broken_code_keeps_the_last_good_code(start_server, workdir):
    plugin = workdir / "middleware" / "dev.py"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN.format(version="1"))
    server = start_server("--workers", "2", "--reload")
    assert version(server) == "1"

    plugin.write_text(PLUGIN.format(version="2"))
    wait_for(lambda: version(server) == "2", what="the saved change to serve")
    wait_for(lambda: reload_counts(server) == (1, 0), what="one reload")

    plugin.write_text(PLUGIN.format(version="3") + "\ndef broken(:\n")
    wait_for(lambda: reload_counts(server) == (1, 1), what="the failed reload")
    log = server.log()
    assert f"{plugin}:" in log and "SyntaxError" in log  # file and line of the error
    assert version(server) == "2"  # the last good code still serves
    helper = workdir / "middleware" / "notes.txt"
    helper.write_text("a save that fixes nothing")  # a new change: one more try, no loop
    wait_for(lambda: reload_counts(server) == (1, 2), what="the second failed reload")
    assert version(server) == "2" and reload_counts(server) == (1, 2)

    plugin.write_text(PLUGIN.format(version="4"))
    wait_for(lambda: version(server) == "4", what="the fixed code to serve")
    assert reload_counts(server) == (2, 2)
    assert server.proc.poll() is None
