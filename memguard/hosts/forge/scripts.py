"""The WebUI scripts on Forge: A1111's two (``a1111.scripts.make_scripts``), the companion extended with Forge's
``process_before_every_sampling`` hook (``modules/scripts.py``; AlwaysVisible scripts only), where memguard puts its
post-CFG function on the pass's UNet patcher (:func:`memguard.hosts.forge.install`), and a ``postprocess`` that hands
the patcher back before reporting."""

from __future__ import annotations

from typing import Any

from .. import forge
from ..a1111 import scripts as a1111_scripts


def make_scripts() -> tuple[type, type]:
    """Return the companion and the "Memorization guard" dropdown script for Forge."""
    watch, guard = a1111_scripts.make_scripts()

    class MemguardWatch(watch):  # type: ignore[valid-type,misc]  # a class made at run time (host-free import)
        def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
            forge.install(p)

        def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
            forge.release(p)
            super().postprocess(p, processed, *args)

    return MemguardWatch, guard
