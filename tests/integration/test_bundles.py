"""Tyk bundles through the real server: found by ``spec["bundle_hash"]`` (md5 of the bundle
name, as the gateway computes it), isolated from each other, loaded when unpacked after
start, and reloaded by SIGHUP."""

from __future__ import annotations

import hashlib
import os
import pwd
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


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pytest.skip(f"no {name!r} user on this system")


def _as_the_gateway_leaves_it(folder: Path, owner: pwd.struct_passwd) -> None:
    """The gateway unpacks bundles as its own user, folders mode 0700 (README, Bundles)."""
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, owner.pw_uid, owner.pw_gid)
        os.chmod(path, 0o700 if path.is_dir() else 0o600)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the server drops to other users")
def test_bundles_unpacked_0700_by_the_gateways_user(start_server, workdir):
    """Workers read 0700 bundle folders when they run as the gateway's user (--user); run
    as another user the server refuses to start (exit 3, as for bundle code that does not
    import) with a message saying why and what to do, not a traceback."""
    gateway_user, other = _user("nobody"), _user("daemon")
    os.chmod(workdir, 0o755)  # plugins must be readable by the workers' user
    bundles = workdir / "bundles"
    bundles.mkdir()
    os.chmod(bundles, 0o755)
    _as_the_gateway_leaves_it(unpack(bundles, "alpha", "alpha-v1.zip"), gateway_user)
    server = start_server("--workers", "1", "--bundles", str(bundles), "--user", "nobody")
    reply = server.dispatch("Describe", spec=spec("alpha-v1.zip"))
    assert reply.request.set_headers["X-Helper"] == "alpha"
    assert server.stop() == 0
    Path(server.notify_path).unlink()  # the next server's harness binds it again
    wrong = start_server(
        "--workers", "1", "--bundles", str(bundles), "--user", other.pw_name, ready=False
    )
    assert wrong.proc.wait(30) == 3
    log = wrong.log()
    assert f"cannot read it as uid {other.pw_uid} (Permission denied)" in log, log
    assert "run the workers as that user (--user)" in log
    assert "Traceback" not in log
