"""tykworker/compiled.py: which hot modules run compiled, and which compiled ones are stale
(older than their source, so that the edited source would not run)."""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tykworker import compiled

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A source tree of the hot modules, none compiled."""
    for module in compiled.MODULES:
        path = tmp_path.joinpath(*module.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    monkeypatch.setattr(compiled, "_ROOT", tmp_path)
    return tmp_path


def _build(tree: Path, module: str, age: float) -> Path:
    """A fake extension of ``module`` built ``age`` seconds after its source changed."""
    source = compiled.source(module)
    built = source.with_name(source.stem + SUFFIX)
    built.write_bytes(b"")
    changed = source.stat().st_mtime
    os.utime(built, (changed + age, changed + age))
    return built


def test_a_pure_tree_says_so(tree: Path):
    assert compiled.loaded() == [] and compiled.stale() == []
    assert compiled.describe().startswith("pure Python")


def test_every_module_compiled(tree: Path):
    for module in compiled.MODULES:
        _build(tree, module, 10)
    assert compiled.loaded() == list(compiled.MODULES) and compiled.stale() == []
    assert compiled.describe() == f"{len(compiled.MODULES)} hot modules compiled (mypyc)"


def test_an_extension_older_than_its_source_is_stale(tree: Path):
    fresh, edited = compiled.MODULES[0], compiled.MODULES[1]
    _build(tree, fresh, 10)
    _build(tree, edited, -10)
    assert compiled.loaded() == [fresh, edited]
    assert compiled.stale() == [edited]
    assert compiled.describe().startswith(f"2 of {len(compiled.MODULES)} hot modules")


def test_the_listed_modules_exist():
    assert all(compiled.source(m).is_file() for m in compiled.MODULES)


def test_tykworker_pure_runs_the_sources_whatever_is_built():
    probe = (
        "import tykworker.front.core as c, tykworker.wire.frames as f\n"
        "from tykworker import compiled\n"
        "print(c.__file__, f.__file__, compiled.loaded(), compiled.describe(), sep='|')"
    )
    env = {**os.environ, "TYKWORKER_PURE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    core, frames, loaded, described = done.stdout.strip().split("|")
    assert core.endswith("core.py") and frames.endswith("frames.py")
    assert loaded == "[]" and described == "pure Python (TYKWORKER_PURE=1)"
