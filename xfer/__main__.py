"""``python -m xfer``: the command line."""

from .cli import main

raise SystemExit(main())
