"""The shipped systemd unit (``systemd/tykworker.service``) and its companions.

The unit is parsed with configparser and checked for what the service relies on; its
ExecStart flags are fed through the real settings loader. ``systemd-analyze verify`` runs
too where it is installed, on both variants: the portable unit (``Type=notify``, which every
systemd knows) alone, and with the ``Type=notify-reload`` drop-in for systemd >= 253 (which
older ones reject, as docs/systemd.md says).
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tykworker.config import load_settings, parse_address
from tykworker.errors import ExitCode

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD_DIR / "tykworker.service"
DROP_IN = SYSTEMD_DIR / "tykworker.service.d" / "notify-reload.conf"


def parse_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(text)
    return parser


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    return parse_unit(UNIT.read_text())


@pytest.fixture(scope="module")
def exec_start(unit: configparser.ConfigParser) -> list[str]:
    # Backslash-newline continuations arrive as "\\\n" inside the value.
    return shlex.split(unit["Service"]["ExecStart"].replace("\\\n", " "))


def flag_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("NotifyAccess", "main"),
        ("KillMode", "mixed"),
        ("RuntimeDirectory", "tykworker"),
        ("RuntimeDirectoryMode", "0750"),
        ("User", "tykworker"),
        ("Group", "tyk"),
        ("WatchdogSec", "30"),
        ("Restart", "on-failure"),
        ("WorkingDirectory", "/opt/tykworker"),
        ("ReadWritePaths", "/run/tykworker"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "no"),
        ("SystemCallFilter", "@system-service"),
    ],
)
def test_service_setting(unit: configparser.ConfigParser, key: str, value: str) -> None:
    assert unit["Service"][key] == value


def test_restart_is_prevented_on_plugin_load_failure(unit: configparser.ConfigParser) -> None:
    assert unit["Service"]["RestartPreventExitStatus"] == str(int(ExitCode.PLUGIN_LOAD_ERROR))


def test_exec_start_serves_on_the_runtime_directory_socket(exec_start: list[str]) -> None:
    assert exec_start[:2] == ["/usr/local/bin/tykworker", "serve"]
    assert flag_value(exec_start, "--socket") == "/run/tykworker/tyk.sock"
    assert flag_value(exec_start, "--socket-mode") == "0660"


def test_exec_start_flags_are_valid_settings(exec_start: list[str]) -> None:
    flags = exec_start[2:]
    assert len(flags) % 2 == 0 and all(f.startswith("--") for f in flags[::2])
    cli = {f[2:].replace("-", "_"): v for f, v in zip(flags[::2], flags[1::2], strict=True)}
    settings = load_settings(cli, environ={})  # raises ConfigError on a bad flag value
    assert parse_address(settings.socket) == ("unix", "/run/tykworker/tyk.sock")
    assert settings.socket_mode == 0o660
    # Everything tykworker writes must be under the only writable path.
    assert settings.resolved_runtime_dir().is_relative_to("/run/tykworker")


def test_stop_timeout_exceeds_graceful_timeout(
    unit: configparser.ConfigParser, exec_start: list[str]
) -> None:
    graceful = float(flag_value(exec_start, "--graceful-timeout"))
    assert graceful == 30
    assert float(unit["Service"]["TimeoutStopSec"]) > graceful


def test_notify_reload_drop_in_switches_the_type_and_resets_exec_reload() -> None:
    # With both, systemd >= 253 would send SIGHUP itself and run kill -HUP: two reloads.
    drop_in = parse_unit(DROP_IN.read_text())
    assert dict(drop_in["Service"]) == {"Type": "notify-reload", "ExecReload": ""}
    assert "253" in DROP_IN.read_text() and "notify-reload.conf" in UNIT.read_text()


def test_memory_deny_write_execute_is_explained() -> None:
    lines = UNIT.read_text().splitlines()
    index = lines.index("MemoryDenyWriteExecute=no")
    comment = " ".join(line for line in lines[index - 4 : index] if line.startswith("#"))
    assert "ctypes" in comment and "cffi" in comment


def test_unit_is_installable(unit: configparser.ConfigParser) -> None:
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert unit["Unit"]["Description"]


def test_sysusers_creates_the_user_in_the_gateway_group() -> None:
    entries = [
        line.split()
        for line in (SYSTEMD_DIR / "tykworker.sysusers.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ["g", "tyk", "-"] in entries
    assert any(e[:2] == ["u", "tykworker"] for e in entries)


def test_tmpfiles_creates_the_working_directory() -> None:
    paths = [
        line.split()[1]
        for line in (SYSTEMD_DIR / "tykworker.tmpfiles.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "/opt/tykworker" in paths
    assert "/opt/tykworker/middleware" in paths


def systemd_version(tool: str) -> int:
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.match(r"systemd (\d+)", out)
    assert match, out
    return int(match.group(1))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("with_drop_in", [False, True], ids=["portable", "notify-reload"])
def test_systemd_analyze_verify(tmp_path: Path, with_drop_in: bool) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    text = UNIT.read_text()
    # verify checks that ExecStart exists; the real binary is not installed here.
    text = text.replace("/usr/local/bin/tykworker", shutil.which("true") or "/bin/true")
    (tmp_path / "tykworker.service").write_text(text)
    if with_drop_in:  # verify reads the drop-in folder next to the unit
        (tmp_path / "tykworker.service.d").mkdir()
        shutil.copy(DROP_IN, tmp_path / "tykworker.service.d" / DROP_IN.name)
    result = subprocess.run(
        [tool, "verify", "--man=no", "./tykworker.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    # Lines about this unit would be warnings (unknown keys, bad values); the manager
    # may print unrelated noise about the container.
    ours = [line for line in result.stderr.splitlines() if "tykworker.service" in line]
    assert result.returncode == 0, result.stderr
    if with_drop_in and systemd_version(tool) < 253:
        # Why the drop-in is for 253+ only (docs/systemd.md, troubleshooting).
        line = DROP_IN.read_text().splitlines().index("Type=notify-reload") + 1
        assert ours == [
            f"{tmp_path}/tykworker.service.d/notify-reload.conf:{line}: "
            "Failed to parse service type, ignoring: notify-reload"
        ], result.stderr
    else:
        assert ours == [], result.stderr
