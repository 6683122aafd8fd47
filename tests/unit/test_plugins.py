"""Loading: bundles written like real Tyk bundles, isolation, Tyk-style plugins, errors."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.cli.objects import AUTH, POST, PRE, RESPONSE, bundle_hash, gateway_object, parse
from tykworker.config import Settings
from tykworker.errors import PluginLoadError
from tykworker.wire.reasons import Reason
from tykworker.worker.plugins import Runtime, bundle_entry, load_runtime

FIXTURES = Path(__file__).parent.parent / "fixtures"
REPO = Path(__file__).parent.parent.parent
EMPTY = FIXTURES / "plugins" / "does-not-exist"


def make_runtime(tmp_path: Path, middleware: Path = EMPTY, bundles: Path | None = None) -> Runtime:
    return load_runtime(
        Settings(
            middleware=str(middleware),
            event_handlers=str(EMPTY),
            bundles=str(bundles) if bundles else None,
            runtime_dir=str(tmp_path / "run"),
        )
    )


@pytest.fixture
def bundles(tmp_path: Path) -> Path:
    """A bundles directory as the gateway unpacks it: <dir>/<md5(bundle name)>/."""
    root = tmp_path / "bundles"
    root.mkdir()
    shutil.copytree(FIXTURES / "bundles" / "alpha", root / bundle_hash("alpha.zip"))
    shutil.copytree(FIXTURES / "bundles" / "beta", root / bundle_hash("beta.zip"))
    return root


@pytest.fixture
def runtime(tmp_path: Path, bundles: Path) -> Iterator[Runtime]:
    rt = make_runtime(tmp_path, FIXTURES / "plugins" / "conventions", bundles)
    yield rt
    rt.close()


def call(runtime: Runtime, obj: object_pb2.Object) -> object_pb2.Object:
    return parse(runtime.dispatch(obj.SerializeToString()))


# --- bundles -----------------------------------------------------------------------


def test_bundles_with_same_named_helpers_stay_isolated(runtime: Runtime) -> None:
    alpha = call(runtime, gateway_object(PRE, "Describe", bundle=bundle_hash("alpha.zip")))
    beta = call(runtime, gateway_object(PRE, "Describe", bundle=bundle_hash("beta.zip")))
    assert alpha.request.set_headers["X-Helper"] == "alpha"
    assert beta.request.set_headers["X-Helper"] == "beta"
    # A helper imported lazily, at call time, still resolves inside its own bundle.
    assert beta.request.set_headers["X-Lazy"] == "beta-lazy"
    # Repeat in the other order: nothing cached across bundles.
    again = call(runtime, gateway_object(PRE, "Describe", bundle=bundle_hash("alpha.zip")))
    assert again.request.set_headers["X-Helper"] == "alpha"


def test_bundle_modules_never_leak_into_sys_modules(runtime: Runtime) -> None:
    call(runtime, gateway_object(PRE, "Describe", bundle=bundle_hash("beta.zip")))
    for name in ("helper", "lazyhelper", "middleware", "hooks"):
        assert name not in sys.modules
    assert sys.modules["session"].__name__ == "tykworker.worker.tyk.session"


def test_bundle_files_never_shadow_stdlib_or_tyk_names(runtime: Runtime) -> None:
    reply = call(runtime, gateway_object(PRE, "Describe", bundle=bundle_hash("alpha.zip")))
    headers = reply.request.set_headers
    assert headers["X-Stdlib-Json"] == '{"ok": true}'  # the bundle's json.py raises if imported
    assert headers["X-Tyk-Session"] == "coprocess.SessionState"  # tyk.session still Tyk's
    assert headers["X-Local-Session"] == "alpha-session-helper"  # bare name: bundle's file


def test_objects_without_bundle_use_the_middleware_registry(runtime: Runtime) -> None:
    reply = call(runtime, gateway_object(PRE, "TypedPre"))
    assert reply.request.set_headers["X-Typed"] == "pre"


def test_bundle_hooks_are_strict_inside_their_bundle(runtime: Runtime) -> None:
    sent = gateway_object(PRE, "TypedPre", bundle=bundle_hash("alpha.zip"))
    reply = call(runtime, sent)
    assert reply.request.return_overrides.response_code == Reason.NO_HOOK.status


def test_code_less_grpc_bundle_and_unknown_bundle_fall_back_to_middleware(
    runtime: Runtime, bundles: Path
) -> None:
    shutil.copytree(FIXTURES / "bundles" / "grpc_only", bundles / bundle_hash("grpc.zip"))
    for bundle in (bundle_hash("grpc.zip"), bundle_hash("never-unpacked.zip")):
        reply = call(runtime, gateway_object(PRE, "AddHeader", bundle=bundle))
        assert reply.request.set_headers["X-Added"] == "yes"


def test_bundle_unpacked_after_start_loads_on_first_use(runtime: Runtime, bundles: Path) -> None:
    later = bundle_hash("later.zip")
    sent = gateway_object(POST, "SingleFile", bundle=later)
    assert call(runtime, sent).request.return_overrides.response_code == 500  # not there yet
    shutil.copytree(FIXTURES / "bundles" / "single", bundles / later)
    assert call(runtime, sent).request.set_headers["X-Single"] == "yes"


def test_bundle_directory_named_by_bundle_name(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    shutil.copytree(FIXTURES / "bundles" / "single", root / "single-v1.zip")
    shutil.copytree(FIXTURES / "bundles" / "beta", root / "beta-v2")
    rt = make_runtime(tmp_path, bundles=root)
    try:
        single = call(rt, gateway_object(POST, "SingleFile", bundle=bundle_hash("single-v1.zip")))
        beta = call(rt, gateway_object(PRE, "Describe", bundle=bundle_hash("beta-v2.zip")))
    finally:
        rt.close()
    assert single.request.set_headers["X-Single"] == "yes"
    assert beta.request.set_headers["X-Helper"] == "beta"


def test_entry_module_rules(tmp_path: Path) -> None:
    single = shutil.copytree(FIXTURES / "bundles" / "single", tmp_path / "s")
    assert bundle_entry(single) == single / "mymiddleware.py"
    multi = shutil.copytree(FIXTURES / "bundles" / "beta", tmp_path / "m")
    assert bundle_entry(multi) == multi / "middleware.py"
    assert bundle_entry(FIXTURES / "bundles" / "grpc_only") is None
    (multi / "middleware.py").unlink()
    with pytest.raises(PluginLoadError, match="no entry module"):
        bundle_entry(multi)
    (multi / "manifest.json").write_text("{not json")
    with pytest.raises(PluginLoadError, match="unreadable manifest"):
        bundle_entry(multi)


def test_events_of_a_bundle_are_found_by_the_api_that_used_it(runtime: Runtime) -> None:
    beta = bundle_hash("beta.zip")
    call(runtime, gateway_object(PRE, "Describe", bundle=beta, api_id="beta-api"))
    payload = object_pb2.Event(
        payload='{"message": {"Type": "QuotaExceeded"}, "handler_name": "BetaEvent",'
        ' "spec": {"APIID": "beta-api", "OrgID": "o"}}'
    ).SerializeToString()
    assert runtime.dispatch_event(payload) == b""
    bundle = runtime.bundles.get(beta)
    assert bundle is not None and bundle.scope is not None
    # The handler imports its helper at call time: the bundle's helper got the event.
    assert bundle.scope.modules["helper"].EVENTS == ["QuotaExceeded"]


# --- Tyk-style plugins and the samples ---------------------------------------------


def test_unmodified_tyk_style_plugin(tmp_path: Path) -> None:
    rt = make_runtime(tmp_path, FIXTURES / "plugins" / "tyk_style")
    try:
        pre = call(rt, gateway_object(PRE, "PreHook", config_data='{"greeting": "hello"}'))
        denied = call(rt, gateway_object(PRE, "PreHook", url="/x?deny=1"))
        key = "47a0c79c427728b3df4af62b9ed4f2a5"
        auth = call(rt, gateway_object(AUTH, "AuthHook", headers={"Authorization": key}))
        response = call(rt, gateway_object(RESPONSE, "ResponseHook"))
    finally:
        rt.close()
    assert pre.request.set_headers["X-Greeting"] == "hello"
    assert denied.request.return_overrides.response_code == 403
    assert (auth.session.metadata["token"], auth.session.quota_max) == (key, 50)
    assert response.response.raw_body == b"intercepted: upstream body"


def test_repository_samples_serve_out_of_the_box(tmp_path: Path) -> None:
    rt = load_runtime(
        Settings(
            middleware=str(REPO / "middleware"),
            event_handlers=str(REPO / "event_handlers"),
            runtime_dir=str(tmp_path),
        )
    )
    key = "47a0c79c427728b3df4af62b9ed4f2a5"
    try:
        pre = call(rt, gateway_object(PRE, "MyPreMiddleware"))
        post = call(rt, gateway_object(POST, "MyPostMiddleware"))
        ok = call(rt, gateway_object(AUTH, "MyAuthCheck", headers={"Authorization": key}))
        bad = call(rt, gateway_object(AUTH, "MyAuthCheck", headers={"Authorization": "nope"}))
        counts = [
            call(rt, gateway_object(POST, "SetKeyOnRequest")).request.set_headers["X-Request-Count"]
            for _ in range(2)
        ]
        resp = call(rt, gateway_object(RESPONSE, "AppendHeader"))
        assert set(rt.event_handlers.events) == {"my_handler"}
    finally:
        rt.close()
    assert pre.request.set_headers["Myheader"] == "Myvalue"
    assert post.request.set_headers["Mypostheader"] == "Mypostvalue"
    assert ok.session.metadata["token"] == key and ok.session.rate > 0
    assert ok.session.quota_max > 0
    assert (bad.request.return_overrides.response_code, bad.HasField("session")) == (403, False)
    assert counts == ["1", "2"]
    assert resp.response.headers["Myresponseheader"] == "Myresponsevalue"


# --- load errors -------------------------------------------------------------------


def test_duplicate_hook_names_in_one_scope_are_an_error(tmp_path: Path) -> None:
    directory = FIXTURES / "plugins" / "duplicate"
    with pytest.raises(PluginLoadError) as info:
        make_runtime(tmp_path, directory)
    message = str(info.value)
    second = directory.resolve() / "second.py"
    assert message.startswith(f"{second}:9: duplicate hook name 'SameName'")
    assert f"first defined at {directory.resolve() / 'first.py'}:4" in message


def test_same_hook_name_in_two_bundles_is_fine(runtime: Runtime) -> None:
    for name in ("alpha.zip", "beta.zip"):
        bundle = runtime.bundles.get(bundle_hash(name))
        assert bundle is not None and "Describe" in bundle.hooks


def test_import_error_names_file_and_line_with_traceback(tmp_path: Path) -> None:
    with pytest.raises(PluginLoadError) as info:
        make_runtime(tmp_path, FIXTURES / "plugins" / "broken")
    message = str(info.value)
    bad = (FIXTURES / "plugins" / "broken" / "bad.py").resolve()
    assert f"{bad}:5: RuntimeError: cannot configure plugin" in message
    assert "Traceback (most recent call last)" in message
    assert "configure()" in message


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "ok.py").write_text("x = 1\n")
    (plugins / "typo.py").write_text("x = 1\n\ndef broken(:\n    pass\n")
    where = re.escape(f"{plugins.resolve() / 'typo.py'}:3: SyntaxError")
    with pytest.raises(PluginLoadError, match=where):
        make_runtime(tmp_path, plugins)
    assert "ok" not in sys.modules


def test_broken_bundle_fails_at_start_and_when_loaded_lazily(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    broken = shutil.copytree(FIXTURES / "bundles" / "single", root / bundle_hash("b.zip"))
    (broken / "mymiddleware.py").write_text("import no_such_module_anywhere\n")
    with pytest.raises(PluginLoadError, match=r"mymiddleware\.py:1: ModuleNotFoundError"):
        make_runtime(tmp_path, bundles=root)
    shutil.rmtree(broken)
    rt = make_runtime(tmp_path, bundles=root)
    try:
        shutil.copytree(FIXTURES / "bundles" / "single", broken)
        (broken / "mymiddleware.py").write_text("raise ValueError('late')\n")
        sent = gateway_object(POST, "SingleFile", bundle=bundle_hash("b.zip"))
        reply = call(rt, sent)
    finally:
        rt.close()
    assert reply.request.return_overrides.response_code == Reason.HOOK_ERROR.status


# --- scopes --------------------------------------------------------------------------


def _scope_dir(root: Path, **files: str) -> Path:
    root.mkdir()
    for name, text in files.items():
        (root / f"{name}.py").write_text(text)
    return root


def test_nested_scopes_see_only_their_own_modules(tmp_path: Path) -> None:
    from tykworker.worker.scope import Scope, install_finder

    install_finder()
    a = Scope("a", _scope_dir(tmp_path / "a", helper="NAME = 'a'", only_a="X = 1"))
    b = Scope("b", _scope_dir(tmp_path / "b", helper="NAME = 'b'"))
    with a.active():
        import helper  # type: ignore[import-not-found]
        import only_a  # type: ignore[import-not-found]

        assert (helper.NAME, only_a.X) == ("a", 1)
        with b.active():
            assert "helper" not in sys.modules  # a's helper set aside
            assert __import__("helper").NAME == "b"
            assert "only_a" not in sys.modules
            with pytest.raises(ModuleNotFoundError):
                __import__("only_a")
            with b.active():  # re-entering the innermost scope changes nothing
                assert sys.modules["helper"].NAME == "b"
        assert sys.modules["helper"] is helper
    assert "helper" not in sys.modules and "only_a" not in sys.modules
    with a.active():
        assert sys.modules["helper"] is helper  # loaded once, kept by its scope


def test_entry_file_with_a_reserved_name_still_loads(tmp_path: Path) -> None:
    plugins = _scope_dir(
        tmp_path / "plugins",
        json="from tyk.decorators import *\n\n@Hook\ndef FromJsonFile(request, session, spec):\n"
        "    request.add_header('X-From', 'json.py')\n    return request, session\n",
    )
    rt = make_runtime(tmp_path, plugins)
    try:
        reply = call(rt, gateway_object(PRE, "FromJsonFile"))
    finally:
        rt.close()
    assert reply.request.set_headers["X-From"] == "json.py"
    import json

    assert hasattr(json, "dumps")


IMPORT = "from tyk.decorators import *\n"


def test_event_handlers_directory_refuses_hooks_and_counts_only_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = tmp_path / "events"
    events.mkdir()
    (events / "ok.py").write_text(f"{IMPORT}@Event\ndef Seen(event, spec):\n    pass\n")
    settings = Settings(
        middleware=str(EMPTY), event_handlers=str(events), runtime_dir=str(tmp_path / "run")
    )
    with caplog.at_level("INFO", "tykworker.plugins"):
        load_runtime(settings).close()
    assert f"loaded event_handlers directory {events}: 1 event handlers" in caplog.text
    (events / "bad.py").write_text(
        f"{IMPORT}@Hook\ndef Misplaced(request, session, spec):\n    pass\n"
    )
    with pytest.raises(PluginLoadError, match=r"bad\.py:2: @Hook Misplaced in event_handlers"):
        load_runtime(settings)
