"""``python -m memguard.ui``: the Memorization tab on the miniature model (see :mod:`memguard.ui.launch`)."""

from .launch import main

raise SystemExit(main())
