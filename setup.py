"""Packaging hook for the optional compiled build; everything else is in pyproject.toml.

``pip install '.[compile]'``, then ``TYKWORKER_COMPILE=1 pip install --no-build-isolation
--no-deps --force-reinstall .`` compiles the hot modules listed in tykworker/compiled.py
with mypyc into the installed package (mypyc type-checks against the installed
dependencies, hence the first step); without the variable the package is pure Python. In a
source tree, ``scripts/compile`` does the same in place.
"""

import os
import runpy

from setuptools import setup

extensions = []
if os.environ.get("TYKWORKER_COMPILE") == "1":
    try:
        import mypyc.build  # noqa: F401  (tykworker/compiled.py ``extensions`` uses it)
    except ImportError as exc:
        raise SystemExit(
            "TYKWORKER_COMPILE=1 needs mypy and the dependencies in the build environment: "
            "pip install '.[compile]', then TYKWORKER_COMPILE=1 pip install "
            "--no-build-isolation --no-deps --force-reinstall ."
        ) from exc
    extensions = runpy.run_path(os.path.join("tykworker", "compiled.py"))["extensions"]()

setup(ext_modules=extensions)
