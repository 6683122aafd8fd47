"""One list of supported Pythons: pyproject's classifiers, README and what scripts/test runs."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def classifier_versions() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [
        c.rsplit(" :: ", 1)[1]
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    return found


def test_classifiers_readme_and_test_script_agree() -> None:
    versions = classifier_versions()
    assert versions == ["3.11", "3.12", "3.13"]
    readme = (ROOT / "README.md").read_text()
    (line,) = [ln for ln in readme.splitlines() if ln.startswith("Supported Python:")]
    assert re.findall(r"3\.\d+", line) == versions
    script = (ROOT / "scripts" / "test").read_text()
    default = re.search(r'TYKWORKER_PYTHONS:-"([^"]+)"', script)
    assert default is not None and default[1].split() == versions


def test_requires_python_admits_the_oldest_and_this_interpreter() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == f">={classifier_versions()[0]}"
    assert f"{sys.version_info[0]}.{sys.version_info[1]}" in classifier_versions()
