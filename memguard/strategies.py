"""The one registry of mitigation strategies: what the command line, the settings, the script dropdown, the X/Y/Z
axes and the API offer, and how a name becomes a :class:`memguard.mitigate.base.Strategy`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .mitigate.base import Strategy

NAMES = ("auto", "embedding", "attention", "guidance")
DEFAULT = "auto"


def build(name: str, *, gradients: bool = True) -> Strategy:
    """The strategy called ``name``; ``gradients=False`` where the host allows no backward pass while sampling
    (``auto`` then picks the attention edit; ``embedding`` cannot run there)."""
    from .mitigate import Attention, Auto, Embedding, Guidance

    if name not in NAMES:
        raise ValueError(f"unknown strategy {name!r}; use one of {', '.join(NAMES)}")
    if name == "embedding" and not gradients:
        raise RuntimeError("embedding optimization needs gradients, which this host does not allow while sampling")
    if name == "auto":
        return Auto(gradients=gradients)
    return {"embedding": Embedding, "attention": Attention, "guidance": Guidance}[name]()
