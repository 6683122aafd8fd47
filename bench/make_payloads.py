"""Write the request bytes the benchmarks send: one ``coprocess.Object`` per scenario.

Each Object is built the way the Tyk gateway builds one for a Pre hook (the gateway's
``CoProcessor.BuildObject``, gateway/coprocess.go): canonical request headers plus
``Host``, ``url``/``request_uri`` with a query string, ``params``, ``method``, ``scheme``,
the body in ``raw_body`` and, since it is UTF-8, again in ``body``;
``return_overrides.response_code = -1``; ``spec`` with ``APIID``, ``OrgID`` and
``bundle_hash = md5("")`` (no bundle: the middleware registry answers). The empty
maps/lists the gateway sends are not on the wire in proto3.

    python bench/make_payloads.py [--out DIR]

Files (default DIR = bench/out/payloads):
    trivial.bin   hook Trivial,  ~1 KB JSON body
    cpu.bin       hook CpuBound, ~1 KB JSON body
    blocking.bin  hook Blocking, ~1 KB JSON body
    fickle.bin    hook Fickle,   ~1 KB JSON body
    big.bin       hook Trivial,  1 MiB body (so ~2 MiB on the wire: body + raw_body)

and for each a ``.grpc`` twin: the same bytes behind the 5-byte gRPC message prefix
(flag 0 + big-endian u32 length), the body ``h2load -d`` needs (see bench/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tykworker._proto import coprocess_object_pb2  # noqa: E402

HOOK_PRE = 1
API_ID = "bench-api-0001"
ORG_ID = "bench-org"
NO_BUNDLE_HASH = hashlib.md5(b"").hexdigest()  # d41d8cd98f00b204e9800998ecf8427e

#: scenario -> (hook name, body size in bytes or 0 for the ~1 KB JSON document)
SCENARIOS: dict[str, tuple[str, int]] = {
    "trivial": ("Trivial", 0),
    "cpu": ("CpuBound", 0),
    "blocking": ("Blocking", 0),
    "fickle": ("Fickle", 0),
    "big": ("Trivial", 1 << 20),
}


def small_body() -> bytes:
    """A ~1 KB JSON order document (what CpuBound parses)."""
    doc = {
        "order_id": "ord-000042",
        "customer": {"id": 4242, "name": "Ada Lovelace", "tier": "gold"},
        "items": [
            {"sku": f"SKU-{i:04d}", "qty": i % 5 + 1, "price": round(i * 1.25, 2)}
            for i in range(18)
        ],
        "note": "benchmark payload",
    }
    return json.dumps(doc).encode()


def big_body(size: int) -> bytes:
    """``size`` bytes of printable JSON-ish text (valid UTF-8, so the gateway sends it
    twice: in ``body`` and in ``raw_body``)."""
    line = b'{"k":"' + b"abcdefghijklmnopqrstuvwxyz0123456789" * 3 + b'"}\n'
    out = line * (size // len(line) + 1)
    return out[:size]


def build_object(hook_name: str, body: bytes) -> bytes:
    obj = coprocess_object_pb2.Object()
    obj.hook_type = HOOK_PRE  # type: ignore[assignment]
    obj.hook_name = hook_name
    req = obj.request
    req.headers.update(
        {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "User-Agent": "tykworker-bench/1.0",
            "X-Request-Id": "7f3c2a9e-4b1d-4c55-9a0e-3d2f1b6c8e71",
            "Authorization": "Bearer bench-token-0123456789abcdef",
            "Host": "gateway.local:8080",
        }
    )
    req.url = "/bench/orders?id=42&mode=fast"
    req.request_uri = "/bench/orders?id=42&mode=fast"
    req.params.update({"id": "42", "mode": "fast"})
    req.method = "POST"
    req.scheme = "http"
    req.raw_body = body
    req.body = body.decode("utf-8")
    req.return_overrides.response_code = -1
    obj.spec.update({"APIID": API_ID, "OrgID": ORG_ID, "bundle_hash": NO_BUNDLE_HASH})
    return obj.SerializeToString()


def write_payloads(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, (hook, size) in SCENARIOS.items():
        body = big_body(size) if size else small_body()
        path = out / f"{name}.bin"
        data = build_object(hook, body)
        path.write_bytes(data)
        (out / f"{name}.grpc").write_bytes(b"\x00" + len(data).to_bytes(4, "big") + data)
        paths[name] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "payloads")
    args = ap.parse_args(argv)
    for name, path in write_payloads(args.out).items():
        print(f"{name:10s} {path.stat().st_size:>9d} bytes  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
