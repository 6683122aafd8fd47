"""Settings loading (``tykworker.config``): precedence, parsing, validation, derived paths."""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tykworker.config import (
    ENV_PREFIX,
    FAIL_OPEN_TYPES,
    HOOK_TYPES,
    SETTINGS_FIELDS,
    Settings,
    add_setting_flags,
    load_settings,
    parse_address,
    unknown_env,
)
from tykworker.errors import ConfigError


def cli_args(*argv: str) -> dict[str, Any]:
    """What the real CLI passes: argparse with one flag per setting, as a dict."""
    parser = argparse.ArgumentParser()
    add_setting_flags(parser)
    return vars(parser.parse_args(list(argv)))


@pytest.fixture
def toml(tmp_path: Path) -> Any:
    def write(text: str) -> str:
        path = tmp_path / "tykworker.toml"
        path.write_text(text)
        return str(path)

    return write


def test_defaults_without_any_layer() -> None:
    s = load_settings({}, environ={})
    assert s == Settings()
    assert s.socket == "/run/tyk.sock"
    assert s.socket_mode == 0o660
    assert s.workers == (os.cpu_count() or 1)
    assert s.hook_timeout == 5.0
    assert s.hook_timeout_for == {}
    assert s.fail_open == ()
    assert s.raw_socket is None
    assert s.redis_url is None
    assert s.max_message_bytes == 64 * 1024 * 1024
    assert (s.max_connections, s.preface_timeout, s.idle_timeout, s.body_timeout) == (
        0,
        10,
        600,
        60,
    )
    assert s.connection_buffer_bytes == 512 * 1024 * 1024
    assert s.total_buffer_bytes == 1024 * 1024 * 1024


def test_buffer_bounds_never_go_below_one_message_or_one_connection() -> None:
    s = load_settings(
        {},
        environ={
            "TYKWORKER_MAX_MESSAGE_MB": "600",
            "TYKWORKER_CONNECTION_BUFFER_MB": "8",
            "TYKWORKER_TOTAL_BUFFER_MB": "1",
        },
    )
    assert s.connection_buffer_bytes == 601 * 1024 * 1024 == s.total_buffer_bytes


def test_load_settings_ignores_the_process_environment_when_given_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TYKWORKER_WORKERS", "3")
    assert load_settings({}, environ={}).workers == (os.cpu_count() or 1)
    assert load_settings({}).workers == 3  # environ=None reads os.environ


# --- precedence matrix: defaults < TOML < env < CLI -------------------------------------

# field, TOML literal, env string, CLI string, and the parsed value of each layer
MATRIX = [
    ("workers", "101", "102", "103", (101, 102, 103)),  # never the CPU-count default
    ("hook_timeout", "1.5", "2.5", "3.5", (1.5, 2.5, 3.5)),
    ("socket", '"/tmp/a.sock"', "unix:///tmp/b.sock", "tcp://127.0.0.1:9000",
     ("/tmp/a.sock", "unix:///tmp/b.sock", "tcp://127.0.0.1:9000")),
    ("socket_mode", "0o600", "640", "0o700", (0o600, 0o640, 0o700)),
    ("hook_timeout_for", "{ pre = 2, auth = 1 }", "post=3", "response=4,event=0.5",
     ({"pre": 2.0, "auth": 1.0}, {"post": 3.0}, {"response": 4.0, "event": 0.5})),
    ("fail_open", '["pre"]', "post,response", "post_key_auth",
     (("pre",), ("post", "response"), ("post_key_auth",))),
    ("redis_url", '"redis://a/0"', "redis://b/1", "redis://c/2",
     ("redis://a/0", "redis://b/1", "redis://c/2")),
    ("log_level", '"debug"', "warning", "error", ("debug", "warning", "error")),
    ("graceful_timeout", "10", "20", "0", (10.0, 20.0, 0.0)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "in_toml", "in_env", "in_cli", "expected"), MATRIX)
@pytest.mark.parametrize("layers", ["", "T", "E", "C", "TE", "TC", "EC", "TEC"])
def test_precedence_matrix(
    toml: Any,
    name: str,
    in_toml: str,
    in_env: str,
    in_cli: str,
    expected: tuple[Any, Any, Any],
    layers: str,
) -> None:
    argv: list[str] = []
    environ: dict[str, str] = {}
    want = getattr(Settings(), name)
    if "T" in layers:
        argv += ["--config", toml(f"{name} = {in_toml}\n")]
        want = expected[0]
    if "E" in layers:
        environ[ENV_PREFIX + name.upper()] = in_env
        want = expected[1]
    if "C" in layers:
        argv += ["--" + name.replace("_", "-"), in_cli]
        want = expected[2]
    s = load_settings(cli_args(*argv), environ=environ)
    assert getattr(s, name) == want
    # Layers only touch the settings they name.
    others = {f.name for f in SETTINGS_FIELDS} - {name}
    assert {o: getattr(s, o) for o in others} == {o: getattr(Settings(), o) for o in others}


def test_matrix_values_differ_per_layer() -> None:
    # Otherwise the matrix above could not tell the layers apart.
    for name, *_, expected in MATRIX:
        assert len({repr(v) for v in expected}) == 3, name
        assert getattr(Settings(), name) not in expected, name


def test_layers_merge_per_setting(toml: Any) -> None:
    path = toml('workers = 2\nhook_timeout = 9\nsocket = "/tmp/t.sock"\n')
    s = load_settings(
        cli_args("--config", path, "--workers", "7"),
        environ={"TYKWORKER_HOOK_TIMEOUT": "8", "TYKWORKER_QUEUE_SIZE": "10"},
    )
    assert (s.workers, s.hook_timeout, s.socket, s.queue_size) == (7, 8.0, "/tmp/t.sock", 10)


def test_config_file_from_environment(toml: Any) -> None:
    path = toml("workers = 5\n")
    assert load_settings({}, environ={"TYKWORKER_CONFIG": path}).workers == 5


def test_cli_config_wins_over_environment_config(toml: Any, tmp_path: Path) -> None:
    env_file = tmp_path / "env.toml"
    env_file.write_text("workers = 6\n")
    s = load_settings(
        cli_args("--config", toml("workers = 5\n")), {"TYKWORKER_CONFIG": str(env_file)}
    )
    assert s.workers == 5


def test_toml_tykworker_table_and_dashed_keys(toml: Any) -> None:
    path = toml(
        """
        [tykworker]
        hook-timeout = 2
        max_message_mb = 8

        [tykworker.hook_timeout_for]
        auth = 0.5
        """
    )
    s = load_settings({"config": path}, environ={})
    assert (s.hook_timeout, s.max_message_mb) == (2.0, 8)
    assert s.max_message_bytes == 8 * 1024 * 1024
    assert s.hook_timeout_for == {"auth": 0.5}


def test_toml_strings_are_parsed_like_env_values(toml: Any) -> None:
    path = toml(
        'workers = "3"\nfail_open = "pre, post"\nhook_timeout_for = "pre=1"\nraw_socket = ""\n'
    )
    s = load_settings({"config": path}, environ={})
    assert (s.workers, s.fail_open, s.hook_timeout_for, s.raw_socket) == (
        3,
        ("pre", "post"),
        {"pre": 1.0},
        None,
    )


def test_cli_replaces_hook_timeout_for_instead_of_merging() -> None:
    s = load_settings(
        cli_args("--hook-timeout-for", "auth=1"),
        environ={"TYKWORKER_HOOK_TIMEOUT_FOR": "pre=2,post=3"},
    )
    assert s.hook_timeout_for == {"auth": 1.0}


def test_empty_strings_clear_optional_settings(toml: Any) -> None:
    path = toml('redis_url = "redis://x"\nbundles = "/b"\n')
    s = load_settings(
        cli_args("--config", path, "--bundles", ""), environ={"TYKWORKER_REDIS_URL": ""}
    )
    assert (s.redis_url, s.bundles) == (None, None)
    assert (
        load_settings(cli_args("--fail-open", ""), {"TYKWORKER_FAIL_OPEN": "pre"}).fail_open == ()
    )


def test_unknown_env_vars_are_ignored() -> None:
    # Only TYKWORKER_<SETTING> names are read; anything else with the prefix is noise.
    s = load_settings({}, environ={"TYKWORKER_NOT_A_SETTING": "x", "WORKERS": "9"})
    assert s == Settings()


# --- timeouts per hook ---------------------------------------------------------------


def test_timeout_for_falls_back_to_hook_timeout() -> None:
    s = load_settings(
        cli_args("--hook-timeout", "4", "--hook-timeout-for", "pre=2, auth=1.5"), environ={}
    )
    assert s.timeout_for("pre") == 2.0
    assert s.timeout_for("auth") == 1.5
    assert s.timeout_for("post") == 4.0
    assert s.timeout_for("event") == 4.0


def test_every_hook_type_name_is_accepted() -> None:
    spec = ",".join(f"{name}={i + 1}" for i, name in enumerate(HOOK_TYPES))
    s = load_settings(cli_args("--hook-timeout-for", spec), environ={})
    assert {name: s.timeout_for(name) for name in HOOK_TYPES} == {
        name: float(i + 1) for i, name in enumerate(HOOK_TYPES)
    }
    allowed = ",".join(FAIL_OPEN_TYPES)
    assert load_settings(cli_args("--fail-open", allowed), {}).fail_open == FAIL_OPEN_TYPES


@pytest.mark.parametrize("name", sorted(set(HOOK_TYPES) - set(FAIL_OPEN_TYPES)))
def test_fail_open_refuses_what_cannot_fail_open(name: str) -> None:
    with pytest.raises(ConfigError, match="fail_open takes pre, post, post_key_auth, response"):
        load_settings(cli_args("--fail-open", name), {})


# --- errors: each names its source and key -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("workers", "many", "invalid literal"),
        ("workers", "2.5", "invalid literal"),
        ("hook_timeout", "soon", "could not convert"),
        ("socket_mode", "0x1ff", "invalid literal"),
        ("hook_timeout_for", "pre", "expected HOOK=SECONDS"),
        ("hook_timeout_for", "pre=x", "could not convert"),
        ("hook_timeout_for", "bogus=1", "unknown hook type 'bogus'"),
        ("fail_open", "pre,sometimes", "unknown hook type 'sometimes'"),
        ("log_format", "xml", "'xml' is not one of text, json"),
        ("log_level", "loud", "is not one of"),
    ],
)
def test_unparsable_values_name_source_and_key(
    toml: Any, name: str, value: str, match: str
) -> None:
    flag = "--" + name.replace("_", "-")
    env_key = ENV_PREFIX + name.upper()
    with pytest.raises(ConfigError, match=match) as from_cli:
        load_settings(cli_args(flag, value), environ={})
    assert str(from_cli.value).startswith(f"{flag}: invalid value for {name!r}")

    with pytest.raises(ConfigError, match=match) as from_env:
        load_settings({}, environ={env_key: value})
    assert str(from_env.value).startswith(f"environment {env_key}: invalid value for {name!r}")

    path = toml(f"{name} = {value!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match=match) as from_file:
        load_settings({"config": path}, environ={})
    assert str(from_file.value).startswith(f"config file {path}: invalid value for {name!r}")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("workers", "0", "must be at least 1"),
        ("hook_timeout", "0", "must be positive"),
        ("hook_timeout", "-1", "must be positive"),
        ("hook_timeout", "nan", "must be positive"),
        ("hook_timeout_for", "pre=0", "must be positive"),
        ("queue_size", "-1", "must be >= 0"),
        ("max_message_mb", "0", "must be >= 1"),
        ("max_requests", "-1", "must be >= 0"),
        ("max_requests_jitter", "-5", "must be >= 0"),
        ("max_rss_mb", "-1", "must be >= 0"),
        ("graceful_timeout", "-0.5", "must be >= 0"),
        ("max_connections", "-1", "must be >= 0"),
        ("preface_timeout", "0", "must be positive"),
        ("idle_timeout", "-1", "must be >= 0"),
        ("body_timeout", "0", "must be positive"),
        ("connection_buffer_mb", "0", "must be >= 1"),
        ("total_buffer_mb", "0", "must be >= 1"),
        ("fail_open", "pre,auth", "auth hooks cannot fail open"),
        ("socket_mode", "0666", "must not grant access to others"),
        ("socket_mode", "0661", "must not grant access to others"),
        ("socket", "tcp://localhost", "tcp needs HOST:PORT"),
        ("socket", "unix://", "address is empty"),
        ("socket", "tcp://", "address is empty"),
    ],
)
def test_validation_errors_name_source_and_key(name: str, value: str, message: str) -> None:
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ConfigError, match=message) as from_cli:
        load_settings(cli_args(flag, value), environ={})
    assert str(from_cli.value).startswith(f"{flag}: invalid value for {name!r}: ")

    env_key = ENV_PREFIX + name.upper()
    with pytest.raises(ConfigError, match=message) as from_env:
        load_settings({}, environ={env_key: value})
    assert str(from_env.value).startswith(f"environment {env_key}: invalid value for {name!r}: ")


def test_validation_error_names_the_winning_layer(toml: Any) -> None:
    # The file sets a bad value, the environment overrides it with another bad one.
    path = toml("workers = -1\nqueue_size = -1\n")
    with pytest.raises(ConfigError) as excinfo:
        load_settings({"config": path}, environ={"TYKWORKER_WORKERS": "0"})
    assert str(excinfo.value) == (
        "environment TYKWORKER_WORKERS: invalid value for 'workers': must be at least 1"
    )
    with pytest.raises(ConfigError, match=rf"^config file {path}: invalid value for 'queue_size'"):
        load_settings({"config": path}, environ={"TYKWORKER_WORKERS": "2"})


def test_unknown_toml_key_is_an_error(toml: Any) -> None:
    path = toml("workers = 2\nworkres = 3\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'workres'") as excinfo:
        load_settings({"config": path}, environ={})
    assert path in str(excinfo.value)


def test_unknown_toml_key_inside_tykworker_table(toml: Any) -> None:
    path = toml("[tykworker]\nworkers = 2\n[tykworker.extra]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'extra'"):
        load_settings({"config": path}, environ={})


def test_tykworker_key_that_is_not_a_table(toml: Any) -> None:
    with pytest.raises(ConfigError, match="'tykworker' must be a table"):
        load_settings({"config": toml("tykworker = 1\n")}, environ={})


@pytest.mark.parametrize(
    ("line", "name", "match"),
    [
        ("workers = true", "workers", "unexpected bool"),
        ("workers = 2.5", "workers", "invalid literal"),
        ("workers = [2]", "workers", "unexpected list"),
        ("hook_timeout = false", "hook_timeout", "unexpected bool"),
        ('hook_timeout = { pre = "1" }', "hook_timeout", "unexpected dict"),
        ("socket_mode = false", "socket_mode", "unexpected bool"),
        ("socket = 123", "socket", "unexpected int"),
        ("redis_url = 6379", "redis_url", "unexpected int"),
        ("log_level = 1", "log_level", "unexpected int"),
        ("hook_timeout_for = 2", "hook_timeout_for", "unexpected int"),
        ("hook_timeout_for = { pre = true }", "hook_timeout_for", "unexpected bool"),
        ('hook_timeout_for = { pre = "x" }', "hook_timeout_for", "could not convert"),
        ("hook_timeout_for = { bogus = 1 }", "hook_timeout_for", "unknown hook type"),
        ("fail_open = [1]", "fail_open", "unknown hook type '1'"),
        ("fail_open = true", "fail_open", "unexpected bool"),
        ("workers = 1979-05-27", "workers", "unexpected date"),
    ],
)
def test_invalid_toml_types(toml: Any, line: str, name: str, match: str) -> None:
    path = toml(line + "\n")
    with pytest.raises(ConfigError, match=match) as excinfo:
        load_settings({"config": path}, environ={})
    assert str(excinfo.value).startswith(f"config file {path}: invalid value for {name!r}")


def test_native_toml_numbers_and_octal_mode(toml: Any) -> None:
    path = toml("workers = 3\nhook_timeout = 2\ngraceful_timeout = 1.5\nsocket_mode = 0o640\n")
    s = load_settings({"config": path}, environ={})
    assert (s.workers, s.hook_timeout, s.graceful_timeout, s.socket_mode) == (3, 2.0, 1.5, 0o640)
    assert isinstance(s.hook_timeout, float)


def test_unreadable_and_malformed_config_files(toml: Any, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"cannot read config file {missing}"):
        load_settings({"config": str(missing)}, environ={})
    path = toml("workers = \n")
    with pytest.raises(ConfigError, match=rf"^config file {path}: "):
        load_settings({"config": path}, environ={})


def test_loading_has_no_side_effects(toml: Any, tmp_path: Path) -> None:
    before = sorted(tmp_path.iterdir())
    environ = {"TYKWORKER_SOCKET": str(tmp_path / "x.sock")}
    snapshot = dict(environ)
    s1 = load_settings(cli_args("--config", toml("workers = 2\n")), environ=environ)
    s2 = load_settings(cli_args("--config", str(tmp_path / "tykworker.toml")), environ=environ)
    assert s1 == s2
    assert environ == snapshot
    assert sorted(tmp_path.iterdir()) == sorted({*before, tmp_path / "tykworker.toml"})
    assert not s1.resolved_runtime_dir().exists()


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.workers = 3  # type: ignore[misc]


# --- addresses and the runtime directory -------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("/run/tyk.sock", ("unix", "/run/tyk.sock")),
        ("unix:///run/tyk.sock", ("unix", "/run/tyk.sock")),
        ("relative.sock", ("unix", "relative.sock")),
        ("tcp://127.0.0.1:9000", ("tcp", "127.0.0.1:9000")),
        ("tcp://[::1]:9000", ("tcp", "[::1]:9000")),
    ],
)
def test_parse_address(address: str, expected: tuple[str, str]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("socket", ["/run/tykworker/tyk.sock", "unix:///run/tykworker/tyk.sock"])
def test_runtime_dir_for_a_unix_socket_is_beside_it(socket: str) -> None:
    s = Settings(socket=socket)
    assert s.resolved_runtime_dir() == Path("/run/tykworker/.tyk.sock.tykworker")


def test_runtime_dir_for_a_relative_unix_socket_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    got = Settings(socket="tyk.sock").resolved_runtime_dir()
    assert got.is_absolute()
    assert got == tmp_path / ".tyk.sock.tykworker"


@pytest.mark.parametrize(
    ("socket", "name"),
    [
        ("tcp://127.0.0.1:9000", "tykworker-tcp-127.0.0.1_9000"),
        ("tcp://[::1]:9000", "tykworker-tcp-__1_9000"),
        ("tcp://0.0.0.0:50051", "tykworker-tcp-0.0.0.0_50051"),
    ],
)
def test_runtime_dir_for_tcp_is_in_the_temp_dir(socket: str, name: str) -> None:
    got = Settings(socket=socket).resolved_runtime_dir()
    assert got == Path(tempfile.gettempdir()) / name
    assert "/" not in got.name and ":" not in got.name


def test_explicit_runtime_dir_wins() -> None:
    s = load_settings(
        cli_args("--runtime-dir", "/var/lib/tw"), environ={"TYKWORKER_SOCKET": "tcp://h:1"}
    )
    assert s.resolved_runtime_dir() == Path("/var/lib/tw")


def test_same_socket_gives_same_runtime_dir_from_any_layer(toml: Any) -> None:
    # `tykworker status --socket X` must find the server started with X in its config file.
    from_file = load_settings({"config": toml('socket = "/tmp/q/tyk.sock"\n')}, environ={})
    from_flag = load_settings(cli_args("--socket", "unix:///tmp/q/tyk.sock"), environ={})
    assert from_file.resolved_runtime_dir() == from_flag.resolved_runtime_dir()


def test_every_setting_has_a_flag_help_and_parser() -> None:
    parser = argparse.ArgumentParser()
    add_setting_flags(parser)
    dests = {action.dest for action in parser._actions}
    for f in SETTINGS_FIELDS:
        assert f.name in dests
        assert f.metadata["help"]
        assert callable(f.metadata["parse"])
    assert all(value is None for key, value in cli_args().items())


def test_live_settings_round_trip_through_msgpack() -> None:
    import msgpack

    from tykworker.config import LIVE_SETTINGS, apply_live_settings, live_settings

    old = load_settings({}, environ={})
    new = load_settings(
        {"hook_timeout": "2", "hook_timeout_for": "auth=1", "fail_open": "post,response",
         "queue_size": "7", "socket": "/elsewhere.sock"},
        environ={},
    )  # fmt: skip
    wire = msgpack.unpackb(msgpack.packb(live_settings(new)))
    applied = apply_live_settings(old, wire)
    for name in LIVE_SETTINGS:
        assert getattr(applied, name) == getattr(new, name)
    assert applied.socket == old.socket  # only live settings move


def test_unknown_tykworker_variables_are_named_with_the_closest_setting() -> None:
    environ = {
        "TYKWORKER_WOKERS": "3",
        "TYKWORKER_HOOK_TIMOUT": "1",
        "TYKWORKER_XYZZY": "1",
        "TYKWORKER_WORKERS": "2",
        "TYKWORKER_CONFIG": "",
        "TYKWORKER_TEST_FRONT": "grpcio",
        "TYKWORKER_PURE": "1",  # the build's switches (compiled.py), not settings
        "TYKWORKER_COMPILE": "1",
        "PATH": "/bin",
    }
    assert unknown_env(environ) == [
        "environment TYKWORKER_HOOK_TIMOUT is not a tykworker setting and is ignored; "
        "did you mean TYKWORKER_HOOK_TIMEOUT?",
        "environment TYKWORKER_WOKERS is not a tykworker setting and is ignored; "
        "did you mean TYKWORKER_WORKERS?",
        "environment TYKWORKER_XYZZY is not a tykworker setting and is ignored "
        "(settings are TYKWORKER_<NAME>, NAME as in the README's table)",
    ]
    assert unknown_env({f"TYKWORKER_{f.name.upper()}": "" for f in SETTINGS_FIELDS}) == []
