"""Regenerate tykworker/_proto from proto/*.proto.

Usage: python scripts/gen_proto.py [OUT_DIR]   (default: tykworker/_proto)

protoc writes sibling imports as top-level modules (``import coprocess_common_pb2``);
they are rewritten to package-relative imports so the generated code lives inside the
``tykworker._proto`` package. ``tests/unit/test_proto_regen.py`` runs this into a
temporary directory and requires the result to equal the committed files byte for byte.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
_SIBLING_IMPORT = re.compile(r"^import (coprocess_\w+_pb2) as (\w+)$", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every .proto file and return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(p.name for p in PROTO_DIR.glob("*.proto"))
    rc = protoc.main(
        ["protoc", f"-I{PROTO_DIR}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", *protos]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    written = sorted(out_dir.glob("coprocess_*_pb2.py*"))
    for path in written:
        text = path.read_text()
        text = _SIBLING_IMPORT.sub(r"from . import \1 as \2", text)
        text = re.sub(r"^from (coprocess_\w+_pb2) import", r"from .\1 import", text, flags=re.M)
        path.write_text(text)
    init = out_dir / "__init__.py"
    init.write_text(
        '"""Generated protobuf modules for Tyk\'s coprocess protocol (do not edit)."""\n'
    )
    return [*written, init]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tykworker" / "_proto"
    for p in generate(target):
        print(p)
