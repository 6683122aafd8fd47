"""``python -m tykworker`` = the ``tykworker`` command."""

from tykworker.cli.commands import main

raise SystemExit(main())
