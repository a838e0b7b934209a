"""SDXL's added conditioning beside the cross-attention context: ``text_embeds`` (the pooled text vector) and
``time_ids`` (original size, crop top-left, target size) per row, as diffusers' ``UNet2DConditionModel`` takes them
(``added_cond_kwargs``, ``addition_embed_type="text_time"``; Podell et al. 2023, Sec. 2.2). memguard keeps ``cond``
the context tensor everywhere (strategies, explanation, attention edit) and carries the rows' added conditioning
alongside, stacked and indexed like the context rows; a strategy's case carries the pooled ``text_embeds`` as its
``pooled`` (optimized with the context by the embedding strategy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .model import Model

Added = dict[str, torch.Tensor] | None
"""SDXL's per-row added conditioning (``text_embeds``, ``time_ids``), None for SD1/SD2."""


def join_added(*parts: Added) -> Added:
    """Rows of several added conditionings stacked (as their contexts are); None when none has any."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    if len(present) != len(parts):
        raise ValueError("added conditioning for some rows only")
    return {k: torch.cat([p[k] for p in present]) for k in present[0]}


def take_added(added: Added, rows: Any) -> Added:
    """Rows ``rows`` (an index, a list, a slice) of an added conditioning."""
    return None if added is None else {k: v[rows] for k, v in added.items()}


def fit_added(added: Added, n: int) -> Added:
    """``added`` for a call on ``n`` rows: as it is when it has ``n``; one row repeated when all its rows are equal
    (a strategy or the occlusion evaluating some rows of one prompt); otherwise ambiguous: ValueError."""
    if added is None:
        return None
    rows = next(iter(added.values())).shape[0]
    if rows == n:
        return added
    if all(bool((v == v[:1]).all()) for v in added.values()):
        return {k: v[:1].expand(n, *v.shape[1:]) for k, v in added.items()}
    raise ValueError(f"{n} rows for an added conditioning of {rows} different rows")


@dataclass
class RowsEps:
    """A Case's network (:class:`~memguard.mitigate.base.RowsModel`) at timestep ``t`` for rows whose SDXL added
    conditioning is ``added`` (one row each): a call on some of them (``rows``) gives each its own; ``pooled``
    replaces their ``text_embeds`` (the embedding optimization's pooled vectors), their ``time_ids`` kept."""

    model: Model
    t: torch.Tensor
    added: Added = None

    def __call__(
        self, x: torch.Tensor, cond: torch.Tensor, rows: Sequence[int] | None = None, pooled: torch.Tensor | None = None
    ) -> torch.Tensor:
        added = self.added if rows is None else take_added(self.added, list(rows))
        if added is not None and pooled is not None:
            added = {**added, "text_embeds": pooled}
        return self.model.eps(x, self.t, cond, added)
