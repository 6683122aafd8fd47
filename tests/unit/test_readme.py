"""The README is the reference for settings and the raw frame layout: keep it complete."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tykworker.config import FAIL_OPEN_TYPES, SETTINGS_FIELDS
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


ROOT = Path(__file__).parents[2]


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def _decorated(directory: Path) -> dict[str, tuple[str, str]]:
    """``{function name: (decorator, file)}`` for every ``@Hook``/``@Event`` function of
    the sample folder (read with ``ast``: nothing is imported)."""
    out = {}
    for path in sorted(directory.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                for deco in node.decorator_list:
                    if isinstance(deco, ast.Name) and deco.id in ("Hook", "Event"):
                        out[node.name] = (deco.id, str(path.relative_to(ROOT)))
    return out


def test_quick_start_installs_into_a_venv_first():
    # Debian/Ubuntu system Pythons refuse `pip install` (externally-managed-environment).
    block = _section("Quick start").split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [c.strip() for line in block.splitlines() for c in line.split("&&")]
    assert commands[:3] == ["python3 -m venv .venv", ". .venv/bin/activate", "pip install -e ."]
    assert "pipx install" in _section("Quick start")


def test_quick_start_lists_exactly_the_sample_hooks():
    rows = re.findall(r"^\| `(\w+)` \| `([\w/.]+)` \| ([^|]+) \|", _section("Quick start"), re.M)
    listed = {name: file for name, file, _ in rows}
    defined = {**_decorated(ROOT / "middleware"), **_decorated(ROOT / "event_handlers")}
    assert listed == {name: file for name, (_, file) in defined.items()}
    kinds = {name: kind for name, _, kind in rows}
    for name, (decorator, _) in defined.items():
        assert ("event handler" in kinds[name]) == (decorator == "Event"), name


def test_quick_start_names_the_auth_samples_valid_key():
    tree = ast.parse((ROOT / "middleware" / "auth.py").read_text())
    key = next(
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "VALID_KEY" for t in node.targets)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )
    assert f"`Authorization: {key}`" in _section("Quick start")
    assert f"--header 'Authorization: {key}'" in _section("Quick start")


def test_fail_open_choices_in_the_readme_are_the_codes():
    listed = re.findall(r"`-*fail.open.{0,120}?any of ((?:`\w+`,?\s*)+)", README)
    assert len(listed) == 2  # the settings table and the answers section
    for text in listed:
        assert tuple(re.findall(r"`(\w+)`", text)) == FAIL_OPEN_TYPES


def test_runtime_dir_places_are_the_ones_the_code_derives():
    import tempfile

    from tykworker.config import Settings

    row = next(line for line in README.splitlines() if line.startswith("| `runtime_dir` |"))
    tcp = Settings(socket="tcp://127.0.0.1:9000").resolved_runtime_dir()
    assert tcp == Path(tempfile.gettempdir()) / "tykworker-tcp-127.0.0.1_9000"
    assert "`$TMPDIR/tykworker-tcp-HOST_PORT/`" in row and "removed" in row
    unix = Settings(socket="/run/x/tyk.sock").resolved_runtime_dir()
    assert unix == Path("/run/x/.tyk.sock.tykworker") and "`.<socket name>.tykworker/`" in row
