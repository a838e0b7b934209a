"""``python -m memguard``: see ``memguard.cli``."""

from .cli import main

raise SystemExit(main())
