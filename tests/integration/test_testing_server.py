"""``tykworker.testing.TykworkerServer`` (the ``tykworker_server`` fixture): a real server on
a temporary socket, for what in-process tests cannot show (deadlines, crashes, workers)."""

from __future__ import annotations

import pytest

from tykworker.testing import ServerError, TykworkerServer, answered_by_tykworker, make_object

from .conftest import EVENTS, PLUGINS

pytestmark = pytest.mark.integration


def test_deadlines_and_crashes_get_the_servers_answers(tmp_path):
    gate = tmp_path / "gate"  # never created: the Gate hook holds its worker
    with TykworkerServer(PLUGINS, EVENTS, args=["--hook-timeout", "0.5"]) as server:
        held = server.call("Gate", make_object("pre", headers={"Gate": str(gate)}))
        assert answered_by_tykworker(held) == "timeout"
        assert held.request.return_overrides.response_code == 504
        crashed = server.call("Exit", make_object("pre"))
        assert answered_by_tykworker(crashed) == "crash"
        served = server.call("Echo", make_object("pre"))
        assert served.request.set_headers["X-Version"] == "1"
        server.event("RecordEvent", {"Type": "AuthFailure"})
        stored = server.call("ReadStore", make_object("pre", headers={"Key": "event:AuthFailure"}))
        assert stored.request.set_headers["X-Value"] == '{"APIID": "api-1", "OrgID": "org-1"}'
        folder = server.workdir
    assert server.proc.returncode == 0 and not folder.exists()  # stopped and cleaned up


def test_a_server_that_cannot_start_reports_its_log(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.py").write_text("def broken(:\n")
    with pytest.raises(ServerError, match=r"bad\.py:1"):
        TykworkerServer(broken)
