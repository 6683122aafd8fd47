"""The committed ``tykworker/_proto`` is exactly what ``scripts/gen_proto.py`` generates.

grpcio-tools is a test dependency (pinned in pyproject.toml so that protoc's output is
stable): if it is missing, this test fails rather than skips.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "tykworker" / "_proto"


def load_gen_proto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.pop("gen_proto", None)
    spec.loader.exec_module(module)  # imports grpc_tools: ImportError fails the test
    return module


def test_regenerated_protos_match_committed_files(tmp_path: Path) -> None:
    out = tmp_path / "_proto"
    written = load_gen_proto().generate(out)

    generated = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    committed = {
        p.name: p.read_bytes()
        for p in COMMITTED.iterdir()
        if p.is_file() and p.suffix in (".py", ".pyi")
    }
    assert sorted(p.name for p in written) == sorted(generated)
    assert sorted(generated) == sorted(committed), (
        "files added or removed: run scripts/gen_proto.py"
    )
    stale = [name for name in sorted(generated) if generated[name] != committed[name]]
    assert not stale, f"stale generated files (run scripts/gen_proto.py): {stale}"


def test_every_proto_has_generated_modules() -> None:
    protos = sorted(p.stem for p in (ROOT / "proto").glob("*.proto"))
    assert protos, "no .proto sources"
    for stem in protos:
        assert (COMMITTED / f"{stem}_pb2.py").is_file()
        assert (COMMITTED / f"{stem}_pb2.pyi").is_file()
