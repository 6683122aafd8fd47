"""tykworker: a supervised, pre-forked worker pool serving Tyk's coprocess gRPC protocol."""

import os as _os

__version__ = "0.1.0"

if _os.environ.get("TYKWORKER_PURE") == "1":  # the sources, not their compiled build
    from tykworker import compiled as _compiled

    _compiled.run_sources()
