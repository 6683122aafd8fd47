"""The README is the reference for settings and the raw frame layout: keep it complete."""

from __future__ import annotations

from pathlib import Path

from tykworker.config import SETTINGS_FIELDS
from tykworker.wire.frames import HEADER_SIZE, MAGIC, FrameKind

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_is_documented():
    missing = [f.name for f in SETTINGS_FIELDS if f"| `{f.name}` |" not in README]
    assert missing == []


def test_raw_frame_layout_matches_the_codec():
    assert f"a {HEADER_SIZE}-byte header" in README
    assert f"magic `{MAGIC.decode()}`" in README
    for kind in (FrameKind.DISPATCH, FrameKind.EVENT, FrameKind.REPLY, FrameKind.ERROR):
        assert f"`{int(kind)}` {kind.name}" in README


def test_readme_test_command_is_what_ci_runs():
    ci = (Path(__file__).parents[2] / ".ci" / "run").read_text()
    assert "./scripts/test" in README and ci.rstrip().endswith("./scripts/test")
