"""docs/testing.md's worked example, as a reader runs it: its files (the code blocks whose
first line names a path) copied into an empty folder, then ``pytest`` there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.integration

DOC = (ROOT / "docs" / "testing.md").read_text()
BLOCK = re.compile(r"```python\n# (?P<path>[\w./-]+\.py)\n(?P<code>.*?)```", re.DOTALL)


def doc_files() -> list[tuple[str, str]]:
    return [(m["path"], m["code"]) for m in BLOCK.finditer(DOC)]


def run_pytest(folder: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TYKWORKER_"))}
    env["PYTHONPATH"] = str(ROOT)  # tykworker as installed; the plugin named as below
    plugin = ["-p", "tykworker.testing.pytest_plugin", "-p", "no:cacheprovider"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *plugin, "-W", "error"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_worked_example_passes_from_an_empty_folder(tmp_path: Path):
    files = doc_files()
    assert [p for p, _ in files[:2]] == ["middleware/plugins.py", "tests/test_plugins.py"]
    assert "```sh\npytest\n```" in DOC and "Five tests pass" in DOC
    project = tmp_path / "my-plugins"
    for path, code in files[:2]:
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(code)
    first = run_pytest(project)
    assert first.returncode == 0, first.stdout + first.stderr
    assert re.search(r"\b5 passed\b", first.stdout), first.stdout
    for path, code in files[2:]:  # the later examples: errors, the real server
        (project / path).write_text(code)
    second = run_pytest(project)
    assert second.returncode == 0, second.stdout + second.stderr
    assert re.search(rf"\b{5 + len(files) - 2} passed\b", second.stdout), second.stdout
