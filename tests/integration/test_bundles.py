"""Tyk bundles through the real server: found by ``spec["bundle_hash"]`` (md5 of the bundle
name, as the gateway computes it), isolated from each other, loaded when unpacked after
start, and reloaded by SIGHUP."""

from __future__ import annotations

import hashlib
import shutil
import signal
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.integration

FIXTURES = ROOT / "tests" / "fixtures" / "bundles"
NO_BUNDLE = hashlib.md5(b"").hexdigest()


def bundle_hash(name: str) -> str:
    return hashlib.md5(name.encode()).hexdigest()


def spec(name: str | None) -> dict[str, str]:
    return {
        "APIID": "api1",
        "OrgID": "org1",
        "bundle_hash": bundle_hash(name) if name else NO_BUNDLE,
    }


def unpack(bundles: Path, fixture: str, name: str) -> Path:
    """Unpack like the gateway: ``<middleware_path>/bundles/<md5(bundle name)>/``."""
    target = bundles / bundle_hash(name)
    shutil.copytree(FIXTURES / fixture, target)
    return target


def test_bundles_are_found_by_hash_and_isolated(start_server, workdir):
    bundles = workdir / "bundles"
    unpack(bundles, "alpha", "alpha-v1.zip")
    unpack(bundles, "beta", "beta-v1.zip")
    server = start_server("--workers", "2", "--bundles", str(bundles))
    alpha = server.dispatch("Describe", spec=spec("alpha-v1.zip")).request.set_headers
    assert alpha["X-Helper"] == "alpha"  # its own helper.py, not beta's
    assert alpha["X-Local-Session"] == "alpha-session-helper"
    assert alpha["X-Stdlib-Json"] == '{"ok": true}'  # a bundle json.py never shadows stdlib
    beta = server.dispatch("Describe", spec=spec("beta-v1.zip")).request.set_headers
    assert beta["X-Helper"] == "beta"
    # Without a bundle, names resolve in the middleware directory.
    plain = server.dispatch("Echo", spec=spec(None))
    assert plain.request.set_headers["X-Version"] == "1"


def test_bundle_unpacked_after_start_and_reloaded(start_server, workdir):
    bundles = workdir / "bundles"
    bundles.mkdir()
    server = start_server("--workers", "1", "--bundles", str(bundles))
    missing = server.dispatch("Describe", spec=spec("alpha-v2.zip"))
    assert missing.request.return_overrides.response_code == 500  # not there yet
    target = unpack(bundles, "alpha", "alpha-v2.zip")
    found = server.dispatch("Describe", spec=spec("alpha-v2.zip"))
    assert found.request.set_headers["X-Helper"] == "alpha"
    # New code under the same bundle directory: picked up by a rolling reload.
    (target / "helper.py").write_text('NAME = "alpha, edited"\n')
    server.signal(signal.SIGHUP)
    server.wait_notify("RELOADING=1")
    assert "reload ready" in server.wait_notify("READY=1")
    edited = server.dispatch("Describe", spec=spec("alpha-v2.zip"))
    assert edited.request.set_headers["X-Helper"] == "alpha, edited"
