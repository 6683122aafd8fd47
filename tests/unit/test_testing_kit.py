"""``tykworker.testing``: ``make_object`` builds what the gateway sends, ``HookRunner`` answers
exactly as a worker's ``Runtime`` does, and the pytest plugin loads once and finds folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from google.protobuf import json_format

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.cli import objects
from tykworker.config import Settings
from tykworker.errors import PluginLoadError
from tykworker.testing import HookRunner, answered_by_tykworker, load_object, make_object
from tykworker.worker.plugins import load_runtime

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "plugins"


# --- make_object -----------------------------------------------------------------------


def test_make_object_is_a_plain_get_by_default():
    obj = make_object("pre", "MyHook")
    assert (obj.hook_type, obj.hook_name) == (objects.PRE, "MyHook")
    assert (obj.request.method, obj.request.url, obj.request.raw_body) == ("GET", "/", b"")
    assert obj.request.headers["Host"] and obj.request.return_overrides.response_code == -1
    assert obj.spec["bundle_hash"] == objects.NO_BUNDLE
    assert not obj.HasField("session") and not obj.HasField("response")


def test_make_object_request_parts():
    obj = make_object(
        "auth_check",
        method="post",
        url="/items?a=1",
        params={"b": "2", "a": "3"},
        headers={"x-api-key": "k"},
        body="héllo",
        spec={"APIID": "demo"},
        config_data={"limit": 3},
    )
    assert obj.hook_type == objects.AUTH
    assert obj.request.url == obj.request.request_uri == "/items?a=1&b=2&a=3"
    assert dict(obj.request.params) == {"a": "1", "b": "2"}  # first value, as the gateway
    assert obj.request.headers["X-Api-Key"] == "k" and obj.request.method == "POST"
    assert obj.request.raw_body == "héllo".encode() and obj.request.body == "héllo"
    assert obj.spec["APIID"] == "demo" and json.loads(obj.spec["config_data"]) == {"limit": 3}


def test_make_object_session_and_metadata():
    obj = make_object("post", session={"rate": 5, "metadata": {"user": "ann"}}, metadata={"x": "1"})
    assert obj.session.rate == 5.0
    assert dict(obj.session.metadata) == dict(obj.metadata) == {"user": "ann", "x": "1"}
    response = make_object("response")
    assert response.HasField("session")  # always, empty without a key
    for hook_type in ("pre", "auth"):
        with pytest.raises(ValueError, match="session"):
            make_object(hook_type, metadata={"x": "1"})
    with pytest.raises(ValueError, match="session"):
        make_object("post", session='{"no_such_field": 1}')


def test_make_object_upstream_response():
    upstream = {
        "status": 201,
        "headers": {"content-type": "application/json", "Set-Cookie": ["a=1", "b=2"]},
        "body": b'{"id": 7}',
    }
    resp = make_object("response", "R", response=upstream).response
    assert (resp.status_code, resp.raw_body, resp.body) == (201, b'{"id": 7}', '{"id": 7}')
    assert dict(resp.headers) == {"Content-Type": "application/json", "Set-Cookie": "a=1"}
    multi = {h.key: list(h.values) for h in resp.multivalue_headers}
    assert multi == {"Content-Type": ["application/json"], "Set-Cookie": ["a=1", "b=2"]}
    with pytest.raises(ValueError, match="only response hooks"):
        make_object("post", response=upstream)
    with pytest.raises(ValueError, match="status"):
        make_object("response", response={"status": "201"})
    with pytest.raises(ValueError, match="unknown keys"):
        make_object("response", response={"code": 201})


def test_make_object_from_a_capture_file(tmp_path: Path):
    captured = make_object("post", "Captured", headers={"X-A": "1"}, session={"rate": 2})
    (tmp_path / "call.json").write_text(json_format.MessageToJson(captured))
    (tmp_path / "call.bin").write_bytes(captured.SerializeToString())
    for name in ("call.json", "call.bin"):
        assert load_object(tmp_path / name) == captured
    changed = make_object(
        hook_name="Other", headers={"x-b": "2"}, url="/new?q=1", from_file=tmp_path / "call.json"
    )
    assert changed.hook_name == "Other" and changed.hook_type == objects.POST
    assert changed.request.headers["X-A"] == "1" and changed.request.headers["X-B"] == "2"
    assert changed.request.url == "/new?q=1" and dict(changed.request.params) == {"q": "1"}
    assert changed.session.rate == 2.0
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json"):
        load_object(tmp_path / "bad.json")


# --- HookRunner = a worker's Runtime ---------------------------------------------------


@pytest.mark.parametrize(
    ("hook_type", "name"),
    [
        ("pre", "Raises"),
        ("pre", "RaisesKeyError"),
        ("pre", "Exits"),
        ("pre", "DoesNotExist"),
        ("response", "AppendResponseHeader"),
        ("response", "DoesNotExist"),
        ("auth", ""),
    ],
)
def test_runner_answers_as_a_worker_does(tmp_path: Path, hook_type: str, name: str):
    sent = make_object(hook_type, headers={"Authorization": "Bearer secret-token"})
    conventions = FIXTURES / "conventions"
    worker = load_runtime(Settings(middleware=str(conventions), runtime_dir=str(tmp_path)))
    try:
        named = object_pb2.Object()
        named.CopyFrom(sent)
        named.hook_name = name
        expected = worker.dispatch(named.SerializeToString())
    finally:
        worker.close()
    with HookRunner(conventions) as runner:
        reply = runner.call(name, sent)
        assert reply == object_pb2.Object.FromString(expected)
        assert runner.last_failure == answered_by_tykworker(reply)


def test_runner_refuses_plugins_that_do_not_import():
    with pytest.raises(PluginLoadError, match=r"\.py:\d+"):
        HookRunner(FIXTURES / "broken")


def test_runner_without_folders_has_no_handlers():
    with HookRunner() as runner:
        assert runner.hooks == [] and runner.event_handlers == []
        reply = runner.call("Anything", make_object("pre"))
        assert answered_by_tykworker(reply) == "no_hook"


def test_runner_close_removes_its_store(tmp_path: Path):
    runner = HookRunner(FIXTURES / "conventions")
    folder = runner._tmp
    runner.store_data("k", "v")
    assert runner.get_data("k") == b"v"
    runner.close()
    runner.close()
    assert not folder.exists()


# --- the pytest plugin -----------------------------------------------------------------

KIT_TEST = """
from tykworker.testing import make_object

def test_hook(tyk_hooks):
    reply = tyk_hooks.call("MyPreMiddleware", make_object("pre"))
    assert reply.request.set_headers["Myheader"] == "Myvalue"
"""


def _run_pytest(folder: Path, *args: str, path: str = ""):
    """pytest in ``folder``, importing this checkout (and ``path``, if given)."""
    environ = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}".rstrip(os.pathsep)}
    environ.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=folder,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_plugin_finds_middleware_of_the_invocation_folder_or_the_option(tmp_path: Path):
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_kit.py").write_text(KIT_TEST)
    (project / "plugins").mkdir()
    sample = (ROOT / "middleware" / "middleware.py").read_text()
    (project / "plugins" / "middleware.py").write_text(sample)
    run = _run_pytest(project, "-p", "tykworker.testing.pytest_plugin", "tests")
    assert run.returncode == 1 and "is not defined in middleware" in run.stdout + run.stderr
    run = _run_pytest(
        project, "-p", "tykworker.testing.pytest_plugin", "--tyk-middleware", "plugins", "tests"
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (project / "middleware").mkdir()
    (project / "middleware" / "middleware.py").write_text(sample)
    run = _run_pytest(project, "-p", "tykworker.testing.pytest_plugin", "tests")
    assert run.returncode == 0, run.stdout + run.stderr


def test_entry_point_and_explicit_plugin_register_once(tmp_path: Path):
    """As installed (``pytest11`` entry point) and also named with ``-p`` (or
    ``pytest_plugins``): one registration, and the project's warnings-as-errors hold."""
    site = tmp_path / "site"
    info = site / "tykworker_kit_probe-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tykworker-kit-probe\nVersion: 0\n")
    entry = textwrap.dedent(
        """\
        [pytest11]
        tykworker.testing.pytest_plugin = tykworker.testing.pytest_plugin
        """
    )
    (info / "entry_points.txt").write_text(entry)
    project = tmp_path / "project"
    (project / "middleware").mkdir(parents=True)
    (project / "middleware" / "middleware.py").write_text(
        (ROOT / "middleware" / "middleware.py").read_text()
    )
    (project / "test_kit.py").write_text(
        'pytest_plugins = ["tykworker.testing.pytest_plugin"]\n' + KIT_TEST
    )
    (project / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    for extra in ((), ("-p", "tykworker.testing.pytest_plugin")):
        run = _run_pytest(project, *extra, "--trace-config", path=str(site))
        output = run.stdout + run.stderr
        assert run.returncode == 0, output
        assert output.count("tykworker/testing/pytest_plugin.py") == 1, output


def test_runner_events_report_a_raising_handler(caplog):
    with HookRunner(event_handlers=FIXTURES / "events") as runner:
        assert runner.event("failing_handler", {"Type": "AuthFailure"}) == "hook_error"
        assert "handler failed" in caplog.text
        assert runner.event("on_auth_failure", {"message": {"Type": "AuthFailure"}}) == ""
        assert runner.last_failure == ""


def test_loading_the_plugin_imports_no_server_code():
    """Every pytest run of a project with tykworker installed loads the plugin: it must not
    pull in the worker (redis, protobuf) or grpc until a test uses the kit."""
    probe = (
        "import sys, tykworker.testing.pytest_plugin, tykworker.testing as kit\n"
        "heavy = [m for m in ('redis', 'grpc', 'tykworker.worker', 'google.protobuf')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "kit.make_object\n"
        "assert 'tykworker.worker' not in sys.modules and 'grpc' not in sys.modules\n"
        "kit.HookRunner\n"
        "assert 'tykworker.worker.plugins' in sys.modules and 'grpc' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
