"""``--help`` of each command through the real entry point (``python3 -m tykworker``)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tykworker.config import FAIL_OPEN_TYPES, SETTINGS_FIELDS


def options(command: str) -> dict[str, str]:
    """``{flag: its help text on one line}`` from ``tykworker COMMAND --help``."""
    done = subprocess.run(
        [sys.executable, "-m", "tykworker", command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    section = done.stdout.split("options:\n", 1)[1]
    out: dict[str, str] = {}
    flag = ""
    for line in section.splitlines():
        found = re.match(r"  (-h, --help|--[\w-]+)(?: \[?[A-Z_:=]+\]?)?(?:\s{2,}(.*))?$", line)
        if found:
            flag = found.group(1).split(", ")[-1]
            out[flag] = found.group(2) or ""
        elif flag:
            out[flag] = (out[flag] + " " + line.strip()).strip()
    return out


@pytest.mark.parametrize(("command", "own"), [("reload", "--wait"), ("status", "--json")])
def test_reload_and_status_list_only_the_options_they_use(command: str, own: str) -> None:
    assert set(options(command)) == {"--help", "--config", "--socket", "--runtime-dir", own}


def test_reload_wait_shows_its_default() -> None:
    assert "(default: 120)" in options("reload")["--wait"]


def test_serve_help_shows_every_settings_default() -> None:
    found = options("serve")
    flags = {"--" + f.name.replace("_", "-") for f in SETTINGS_FIELDS}
    assert flags | {"--help", "--config"} == set(found)
    assert [flag for flag in sorted(flags) if "default" not in found[flag]] == []
    assert "(default: /run/tyk.sock)" in found["--socket"]
    assert "(default: 660)" in found["--socket-mode"]
    assert "(default: 5.0)" in found["--hook-timeout"]


def test_fail_open_help_lists_the_choices_the_parser_takes() -> None:
    assert options("serve")["--fail-open"].endswith(f"{', '.join(FAIL_OPEN_TYPES)} (default: none)")
