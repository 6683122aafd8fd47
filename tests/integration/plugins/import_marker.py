"""Records which process imports plugin code (DESIGN invariants 1 and 2: only workers)."""

import os

_log = os.environ.get("TW_IMPORT_LOG")
if _log:
    with open(_log, "a") as fh:
        fh.write(f"{os.getpid()}\n")
