"""Settings: one typed declaration per setting, loaded from four layers.

Precedence, lowest to highest: defaults -> TOML file (``--config``) -> ``TYKWORKER_*``
environment -> command-line flags. Each setting is one field of the frozen ``Settings``
dataclass; its metadata carries the help text and the parser used for strings (env and
CLI). TOML values may be native TOML types or strings.

Invariants:
* ``load_settings`` has no side effects (no logging set-up, no files created); it returns a
  valid ``Settings`` or raises ``ConfigError`` naming the offending source and key.
* The same ``argv``/``environ`` always give the same ``Settings`` (used by SIGHUP reload).
* Security settings are checked here, not at first use: ``socket_mode`` never grants
  anything to others (no world-accessible socket), and ``socket_group``, ``user`` and
  ``group`` must name existing accounts (reading the account databases is the only I/O).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import grp
import os
import pwd
import tempfile
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tykworker.errors import ConfigError

ENV_PREFIX: Final = "TYKWORKER_"

#: Hook-type names used in settings (``--hook-timeout-for``, ``--fail-open``) and their
#: ``coprocess.HookType`` numbers. ``event`` is DispatchEvent.
HOOK_TYPES: Final[Mapping[str, int]] = {
    "pre": 1,
    "post": 2,
    "post_key_auth": 3,
    "auth": 4,
    "response": 5,
    "event": 0,
}
#: The hook types ``fail_open`` takes: the one list the parser, ``--help`` and the README
#: (tests/unit/test_readme.py) give. Not ``auth`` (the gateway needs a session, so an echo
#: would be a 403 anyway) and not ``event`` (its answer is ignored: nothing to open).
FAIL_OPEN_TYPES: Final = ("pre", "post", "post_key_auth", "response")


def _parse_optional_str(text: str) -> str | None:
    return text or None


def _parse_hook_map(text: str) -> dict[str, float]:
    """``"pre=2,auth=1.5"`` -> ``{"pre": 2.0, "auth": 1.5}``."""
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected HOOK=SECONDS, got {item!r}")
        out[_hook_name(name.strip())] = float(value)
    return out


def _parse_fail_open(text: str) -> tuple[str, ...]:
    return tuple(_fail_open_name(p.strip()) for p in text.split(",") if p.strip())


def _fail_open_name(name: str) -> str:
    if name in FAIL_OPEN_TYPES:
        return name
    choices = f"fail_open takes {', '.join(FAIL_OPEN_TYPES)}"
    if name == "auth":
        raise ValueError(f"auth hooks cannot fail open (the gateway needs a session); {choices}")
    if name == "event":
        raise ValueError(f"events cannot fail open (their answer is ignored); {choices}")
    raise ValueError(f"unknown hook type {name!r} ({choices})")


def _hook_name(name: str) -> str:
    if name not in HOOK_TYPES:
        raise ValueError(f"unknown hook type {name!r} (one of {', '.join(HOOK_TYPES)})")
    return name


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_mode(text: str) -> int:
    return int(text, 8)


def _parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


def _setting(default: Any, help: str, parse: Callable[[str], Any], **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, "parse": parse, **kw})


@dataclass(frozen=True, slots=True)
class Settings:
    """Every tykworker setting. Field name = TOML key; env var = TYKWORKER_<NAME>;
    flag = --<name-with-dashes>."""

    socket: str = _setting(
        "/run/tyk.sock", "gRPC listen address: PATH, unix://PATH or tcp://HOST:PORT", str
    )
    raw_socket: str | None = _setting(
        None, "optional Unix socket path for raw length-prefixed frames", _parse_optional_str
    )
    front: str = _setting(
        "native",
        "gRPC server of the front: native (built-in HTTP/2, h2c) or grpcio",
        _parse_choice("native", "grpcio"),
    )
    socket_mode: int = _setting(0o660, "permission bits of Unix sockets (octal)", _parse_mode)
    socket_group: str | None = _setting(
        None, "group owning the gRPC and raw Unix sockets (name or gid)", _parse_optional_str
    )
    user: str | None = _setting(
        None, "started as root: workers run as this user (name or uid)", _parse_optional_str
    )
    group: str | None = _setting(
        None, "started as root: the workers' group (default: the user's)", _parse_optional_str
    )
    middleware: str = _setting("./middleware", "directory of middleware modules", str)
    event_handlers: str = _setting("./event_handlers", "directory of event handler modules", str)
    bundles: str | None = _setting(
        None, "directory of unpacked Tyk bundles (<dir>/<bundle_hash>/)", _parse_optional_str
    )
    workers: int = _setting(os.cpu_count() or 1, "number of worker processes", int)
    hook_timeout: float = _setting(5.0, "per-call deadline in seconds", float)
    hook_timeout_for: dict[str, float] = field(
        default_factory=dict,
        metadata={"help": "per-hook-type deadlines, e.g. pre=2,auth=1", "parse": _parse_hook_map},
    )
    fail_open: tuple[str, ...] = _setting(
        (),
        "hook types answered by echoing the request on timeout/crash/overload, comma-separated:"
        f" {', '.join(FAIL_OPEN_TYPES)}",
        _parse_fail_open,
    )
    queue_size: int = _setting(1024, "calls waiting for a worker before overload answers", int)
    pipeline_depth: int = _setting(
        4, "calls a busy worker may be sent ahead when none is idle (1 = off)", int
    )
    pipeline_fast_ms: float = _setting(
        2.0, "only hooks averaging at most this many ms per call are sent ahead", float
    )
    async_concurrency: int = _setting(
        100, "async hook calls a worker runs at once (sync hooks: one at a time)", int
    )
    max_message_mb: int = _setting(64, "largest gRPC/raw message accepted or sent, MiB", int)
    max_requests: int = _setting(0, "recycle a worker after this many calls (0 = never)", int)
    max_requests_jitter: int = _setting(0, "random extra calls added to --max-requests", int)
    max_rss_mb: int = _setting(0, "recycle a worker whose RSS exceeds this (0 = never)", int)
    graceful_timeout: float = _setting(30.0, "seconds to finish calls on stop/reload", float)
    redis_url: str | None = _setting(
        None, "Redis URL for store_data/get_data (default: embedded store)", _parse_optional_str
    )
    runtime_dir: str | None = _setting(
        None, "directory for private sockets, scoreboard and store", _parse_optional_str
    )
    log_format: str = _setting("text", "log format: text or json", _parse_choice("text", "json"))
    log_level: str = _setting(
        "info", "log level", _parse_choice("debug", "info", "warning", "error")
    )
    metrics: str | None = _setting(
        None, "Prometheus metrics listen address: HOST:PORT or a Unix path", _parse_optional_str
    )
    slow_call_threshold: float = _setting(
        0.0, "log the Python stack of calls running longer than this, seconds (0 = off)", float
    )
    max_connections: int = _setting(
        0,
        "public connections (gRPC + raw) held at once; 0 = the descriptor limit minus a reserve",
        int,
    )
    preface_timeout: float = _setting(
        10.0, "seconds a new HTTP/2 connection has to send its preface and SETTINGS", float
    )
    idle_timeout: float = _setting(
        600.0, "close a connection without calls for this many seconds (0 = never)", float
    )
    body_timeout: float = _setting(
        60.0, "seconds a request (or an answer held by flow control) may wait on the client", float
    )
    connection_buffer_mb: int = _setting(
        512,
        "incomplete requests + answers held for a client, MiB per connection (>= max_message_mb)",
        int,
    )
    total_buffer_mb: int = _setting(
        1024, "the same bytes summed over all connections, MiB (>= connection_buffer_mb)", int
    )
    reload: bool = _setting(
        False,
        "development: roll a reload whenever a file of the plugin folders is saved",
        _parse_bool,
    )
    capture: str | None = _setting(
        None,
        "write each call's Object to this folder, secrets redacted, for replay "
        "(tykworker call --object-file); development and staging only",
        _parse_optional_str,
    )
    capture_every: int = _setting(1, "with capture: one call in N per worker", int)
    capture_max_files: int = _setting(1000, "with capture: stop after this many files", int)
    capture_max_mb: int = _setting(64, "with capture: the folder's files stay under this, MiB", int)
    tracing: str = _setting(
        "auto",
        "OpenTelemetry spans per call: auto (on when OTEL_EXPORTER_OTLP_ENDPOINT or "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set), on or off",
        _parse_choice("auto", "on", "off"),
    )

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def connection_buffer_bytes(self) -> int:
        """Per-connection buffer bound: never below one message of ``max_message_mb``."""
        return max(self.connection_buffer_mb, self.max_message_mb + 1) * 1024 * 1024

    @property
    def total_buffer_bytes(self) -> int:
        """Bound over all connections: never below one connection's."""
        return max(self.total_buffer_mb * 1024 * 1024, self.connection_buffer_bytes)

    def timeout_for(self, hook: str) -> float:
        """Deadline in seconds for a hook type name (see ``HOOK_TYPES``)."""
        return self.hook_timeout_for.get(hook, self.hook_timeout)

    def socket_gid(self) -> int | None:
        """The gid to give the public Unix sockets, None to leave it. Raises ValueError."""
        return None if self.socket_group is None else lookup_gid(self.socket_group)

    def worker_identity(self) -> tuple[int, int, tuple[int, ...]] | None:
        """``(uid, gid, supplementary gids)`` workers switch to after fork (``user`` /
        ``group``), None to keep the supervisor's. Raises ValueError for an unknown name."""
        if self.user is None and self.group is None:
            return None
        uid, gid, groups = os.getuid(), os.getgid(), tuple(os.getgroups())
        if self.user is not None:
            entry = lookup_user(self.user)
            uid, gid = entry.pw_uid, entry.pw_gid
            groups = tuple(os.getgrouplist(entry.pw_name, gid)) if entry.pw_name else (gid,)
        if self.group is not None:
            gid = lookup_gid(self.group)
            groups = (gid,) if self.user is None else tuple(dict.fromkeys((gid, *groups)))
        return uid, gid, groups

    def resolved_runtime_dir(self) -> Path:
        """The runtime directory: explicit, else derived from the socket address so that
        ``tykworker status --socket X`` finds the same one: ``.<name>.tykworker`` next to a
        Unix socket, ``$TMPDIR/tykworker-tcp-HOST_PORT`` for tcp:// (the supervisor removes
        the latter when it stops)."""
        if self.runtime_dir:
            return Path(self.runtime_dir)
        kind, address = parse_address(self.socket)
        if kind == "unix":
            path = Path(address).absolute()
            return path.parent / f".{path.name}.tykworker"
        safe = address.replace(":", "_").replace("[", "").replace("]", "")
        return Path(tempfile.gettempdir()) / f"tykworker-tcp-{safe}"


def parse_address(address: str) -> tuple[str, str]:
    """Split a listen address into ``("unix", path)`` or ``("tcp", "host:port")``."""
    if address.startswith("tcp://"):
        return "tcp", address[len("tcp://") :]
    if address.startswith("unix://"):
        return "unix", address[len("unix://") :]
    return "unix", address


def metrics_address(address: str) -> tuple[str, str, int] | None:
    """Split the ``metrics`` setting into ``("unix", path, 0)`` (``unix://PATH`` or any
    text with a ``/``) or ``("tcp", host, port)`` (``HOST:PORT``, ``[V6]:PORT``; an empty
    host is every interface). None if it is neither."""
    if not address.startswith("tcp://") and (address.startswith("unix://") or "/" in address):
        return "unix", address.removeprefix("unix://"), 0
    host, sep, port = address.removeprefix("tcp://").rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return "tcp", host.strip("[]"), int(port)


def lookup_user(name: str) -> pwd.struct_passwd:
    """A user by name or numeric uid (a uid without a passwd entry is allowed: its
    group is then the gid of the same number)."""
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        if name.isdigit():
            uid = int(name)
            return pwd.struct_passwd(("", "x", uid, uid, "", "/", ""))
        raise ValueError(f"no such user {name!r}") from None


def lookup_gid(name: str) -> int:
    """A group by name or numeric gid."""
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"no such group {name!r}") from None


def _resolves(lookup: Callable[[], object]) -> bool:
    try:
        lookup()
    except ValueError:
        return False
    return True


SETTINGS_FIELDS: Final = tuple(dataclasses.fields(Settings))
_FIELD_BY_NAME: Final = {f.name: f for f in SETTINGS_FIELDS}


def _seconds(value: Any) -> float:
    # float(True) == 1.0: a TOML boolean must not pass for a number of seconds.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"unexpected {type(value).__name__} value {value!r}")
    return float(value)


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a raw value from TOML/env/CLI into the field's type, or raise ConfigError."""
    f = _FIELD_BY_NAME[name]
    try:
        if isinstance(value, str):
            return f.metadata["parse"](value)
        if f.type == "bool" and isinstance(value, bool):
            return value
        if name == "hook_timeout_for" and isinstance(value, dict):
            return {_hook_name(k): _seconds(v) for k, v in value.items()}
        if name == "fail_open" and isinstance(value, list):
            return tuple(_fail_open_name(str(v)) for v in value)
        # Native TOML numbers only for numeric settings (bool is an int subclass: reject
        # it, or `socket_mode = false` would silently give mode 0).
        numeric = f.type in ("int", "float")
        if isinstance(value, bool) or not numeric or not isinstance(value, (int, float)):
            raise ValueError(f"unexpected {type(value).__name__} value {value!r}")
        if name == "socket_mode":
            return value
        return f.metadata["parse"](str(value))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: invalid value for {name!r}: {exc}") from exc


def _from_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    section = data.get("tykworker", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: 'tykworker' must be a table")
    out = {}
    for key, value in section.items():
        name = key.replace("-", "_")
        if name not in _FIELD_BY_NAME:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        out[name] = _coerce(name, value, f"config file {path}")
    return out


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for name in _FIELD_BY_NAME:
        key = ENV_PREFIX + name.upper()
        if key in environ:
            out[name] = _coerce(name, environ[key], f"environment {key}")
    return out


#: ``TYKWORKER_*`` names that are not settings but are read: the config file, the build's
#: (``TYKWORKER_PURE`` runs the sources where modules are compiled, ``TYKWORKER_COMPILE``
#: compiles them at install: compiled.py), and the variables of tykworker's own test suite
#: (``TYKWORKER_TEST_FRONT``...).
_OTHER_ENV: Final = (ENV_PREFIX + "CONFIG", ENV_PREFIX + "PURE", ENV_PREFIX + "COMPILE")
_TEST_ENV_PREFIX: Final = ENV_PREFIX + "TEST_"


def unknown_env(environ: Mapping[str, str]) -> list[str]:
    """One message per ``TYKWORKER_*`` variable of ``environ`` that names no setting
    (ignored by ``load_settings``, so a typo would pass unseen), with the closest name."""
    known = [name.upper() for name in _FIELD_BY_NAME] + [k[len(ENV_PREFIX) :] for k in _OTHER_ENV]
    out = []
    for key in sorted(environ):
        name = key[len(ENV_PREFIX) :]
        if not key.startswith(ENV_PREFIX) or name in known or key.startswith(_TEST_ENV_PREFIX):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = (
            f"; did you mean {ENV_PREFIX}{close[0]}?"
            if close
            else f" (settings are {ENV_PREFIX}<NAME>, NAME as in the README's table)"
        )
        out.append(f"environment {key} is not a tykworker setting and is ignored{hint}")
    return out


def add_setting_flags(
    parser: argparse.ArgumentParser, names: Sequence[str] | None = None, defaults: bool = False
) -> None:
    """Add one ``--flag`` per setting (only those in ``names`` if given), plus ``--config``;
    parsed values stay strings (None when absent). ``defaults``: each help ends with the
    setting's default."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file")
    for f in SETTINGS_FIELDS:
        if names is not None and f.name not in names:
            continue
        text = f.metadata["help"]
        if defaults and "(default" not in text:  # some helps say it in their own words
            text += f" (default: {shown_default(f.name)})"
        # A switch (``--reload``) may stand alone; ``--reload false`` turns it off.
        switch: dict[str, Any] = {"nargs": "?", "const": "true"} if f.type == "bool" else {}
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, default=None, help=text, **switch
        )


def shown_default(name: str) -> str:
    """A setting's default as ``--help`` and the README show it."""
    value = getattr(Settings(), name)  # the defaults (validation is load_settings')
    if name == "socket_mode":
        return format(value, "o")
    if name == "workers":
        return f"the CPU count, {value} here"
    if name == "runtime_dir":
        return ".<socket name>.tykworker/ next to a Unix socket, $TMPDIR/tykworker-tcp-HOST_PORT"
    if value is None or value == () or value == {}:
        return "none"
    return str(value)


def load_settings(
    cli: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the four layers into a validated ``Settings``.

    ``cli`` maps field names (plus ``config``) to the raw strings given on the command
    line (``None`` = not given). Raises ``ConfigError`` on any invalid value.
    """
    cli = cli or {}
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}  # setting -> the layer its value came from, for errors
    config_file = cli.get("config") or environ.get(ENV_PREFIX + "CONFIG")
    if config_file:
        from_file = _from_toml(config_file)
        values.update(from_file)
        sources.update(dict.fromkeys(from_file, f"config file {config_file}"))
    from_env = _from_env(environ)
    values.update(from_env)
    sources.update({name: f"environment {ENV_PREFIX}{name.upper()}" for name in from_env})
    for name, raw in cli.items():
        if name in _FIELD_BY_NAME and raw is not None:
            sources[name] = f"--{name.replace('_', '-')}"
            values[name] = _coerce(name, raw, sources[name])
    settings = Settings(**values)
    _validate(settings, sources)
    return settings


def _validate(s: Settings, sources: Mapping[str, str]) -> None:
    kind, address = parse_address(s.socket)
    checks: Sequence[tuple[bool, str, str]] = (
        (s.workers >= 1, "workers", "must be at least 1"),
        (s.hook_timeout > 0, "hook_timeout", "must be positive"),
        (all(v > 0 for v in s.hook_timeout_for.values()), "hook_timeout_for", "must be positive"),
        (s.queue_size >= 0, "queue_size", "must be >= 0"),
        (1 <= s.pipeline_depth <= 64, "pipeline_depth", "must be between 1 and 64"),
        (s.pipeline_fast_ms >= 0, "pipeline_fast_ms", "must be >= 0"),
        (1 <= s.async_concurrency <= 100000, "async_concurrency", "must be between 1 and 100000"),
        (s.max_message_mb >= 1, "max_message_mb", "must be >= 1"),
        (s.max_requests >= 0, "max_requests", "must be >= 0"),
        (s.max_requests_jitter >= 0, "max_requests_jitter", "must be >= 0"),
        (s.max_rss_mb >= 0, "max_rss_mb", "must be >= 0"),
        (s.graceful_timeout >= 0, "graceful_timeout", "must be >= 0"),
        (s.slow_call_threshold >= 0, "slow_call_threshold", "must be >= 0"),
        (s.max_connections >= 0, "max_connections", "must be >= 0"),
        (s.preface_timeout > 0, "preface_timeout", "must be positive"),
        (s.idle_timeout >= 0, "idle_timeout", "must be >= 0"),
        (s.body_timeout > 0, "body_timeout", "must be positive"),
        (s.connection_buffer_mb >= 1, "connection_buffer_mb", "must be >= 1"),
        (s.total_buffer_mb >= 1, "total_buffer_mb", "must be >= 1"),
        (s.capture_every >= 1, "capture_every", "must be at least 1"),
        (s.capture_max_files >= 1, "capture_max_files", "must be at least 1"),
        (s.capture_max_mb >= 1, "capture_max_mb", "must be at least 1"),
        (
            s.metrics is None or metrics_address(s.metrics) is not None,
            "metrics",
            f"expected HOST:PORT or a Unix socket path, got {s.metrics!r}",
        ),
        (
            set(s.fail_open) <= set(FAIL_OPEN_TYPES),
            "fail_open",
            f"fail_open takes {', '.join(FAIL_OPEN_TYPES)}",
        ),
        (s.socket_mode & 0o007 == 0, "socket_mode", "must not grant access to others"),
        (_resolves(s.socket_gid), "socket_group", f"no such group {s.socket_group!r}"),
        (
            s.user is None or _resolves(lambda: lookup_user(str(s.user))),
            "user",
            f"no such user {s.user!r}",
        ),
        (
            s.group is None or _resolves(lambda: lookup_gid(str(s.group))),
            "group",
            f"no such group {s.group!r}",
        ),
        (bool(address), "socket", "address is empty"),
        (kind != "tcp" or ":" in address, "socket", f"tcp needs HOST:PORT, got {s.socket!r}"),
    )
    for ok, name, message in checks:
        if not ok:
            source = sources.get(name, "default")
            raise ConfigError(f"{source}: invalid value for {name!r}: {message}")


#: Settings the front applies on SIGHUP without a restart (see ``live_settings``).
LIVE_SETTINGS: Final = ("hook_timeout", "hook_timeout_for", "fail_open", "queue_size")
#: Settings bound when a process starts: changing them needs a restart (SIGHUP logs it).
RESTART_ONLY: Final = (
    "socket", "raw_socket", "socket_mode", "socket_group", "front", "max_message_mb",
    "metrics", "runtime_dir", "user", "group", "max_connections", "preface_timeout",
    "idle_timeout", "body_timeout", "connection_buffer_mb", "total_buffer_mb", "reload",
    "tracing",
)  # fmt: skip


def live_settings(settings: Settings) -> dict[str, Any]:
    """The live settings as plain values (msgpack-able: tuples become lists)."""
    out: dict[str, Any] = {}
    for name in LIVE_SETTINGS:
        value = getattr(settings, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def apply_live_settings(settings: Settings, values: Mapping[str, Any]) -> Settings:
    """``settings`` with the live fields from ``values`` (a ``live_settings`` dict)."""
    changes = {k: v for k, v in values.items() if k in LIVE_SETTINGS}
    if "fail_open" in changes:
        changes["fail_open"] = tuple(changes["fail_open"])
    return dataclasses.replace(settings, **changes)
