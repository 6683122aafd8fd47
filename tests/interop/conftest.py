"""Interop fixtures: the integration suite's real-server fixtures, plus the Go client and
h2spec binaries built once per session with the machine's Go toolchain (modules from the
Go module proxy; tests skip only when ``go`` is not installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ..integration.conftest import start_server, workdir  # noqa: F401 - fixtures

HERE = Path(__file__).parent
H2SPEC_MODULE = "github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible"


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        pytest.skip("the Go toolchain (go) is not installed")
    return go


@pytest.fixture(scope="session")
def interop_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/interop/main.go built with ``go build``."""
    out = tmp_path_factory.mktemp("interop") / "interop"
    subprocess.run([_go(), "build", "-o", str(out), "."], cwd=HERE, check=True, timeout=600)
    return out


@pytest.fixture(scope="session")
def h2spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """h2spec, ``go install``-ed into a temporary GOBIN (a pinned version)."""
    gobin = tmp_path_factory.mktemp("gobin")
    env = {**os.environ, "GOBIN": str(gobin)}
    proc = subprocess.run(
        [_go(), "install", H2SPEC_MODULE], env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"go install {H2SPEC_MODULE} failed:\n{proc.stderr}")
    return gobin / "h2spec"
