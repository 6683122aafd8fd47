"""``python -m tykworker`` = the ``tykworker`` command."""

from tykworker.cli import main

raise SystemExit(main())
