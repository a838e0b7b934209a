"""SDXL's added conditioning beside the cross-attention context: ``text_embeds`` (the pooled text vector) and
``time_ids`` (original size, crop top-left, target size) per row, as diffusers' ``UNet2DConditionModel`` takes them
(``added_cond_kwargs``, ``addition_embed_type="text_time"``; Podell et al. 2023, Sec. 2.2). memguard keeps ``cond``
the context tensor everywhere (strategies, explanation, attention edit) and carries the rows' added conditioning
alongside, stacked and indexed like the context rows."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from .mitigate.base import Case, Intervention, Strategy

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
    """A Case's ``eps_model(x, cond)`` at timestep ``t`` for rows whose SDXL added conditioning is ``added`` (one
    row each; a call on fewer rows of one prompt repeats its row, :func:`fit_added`)."""

    model: Model
    t: torch.Tensor
    added: Added = None

    def __call__(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.model.eps(x, self.t, cond, self.added)

    def groups(self) -> list[list[int]]:
        """The rows sharing one added conditioning, in order of first appearance."""
        if self.added is None:
            return []
        keys: dict[tuple, list[int]] = {}
        stacked = torch.cat([v.flatten(1).float() for v in self.added.values()], dim=1)
        for i, row in enumerate(stacked.tolist()):
            keys.setdefault(tuple(row), []).append(i)
        return list(keys.values())


@dataclass
class Grouped:
    """``inner`` run once per group of targets that share their added conditioning (SDXL: one prompt's pooled
    vector), so that whatever subset of a group's rows a strategy evaluates (the embedding optimization drops the rows
    that reached the target) the rows' added conditioning is known; the interventions are put back together in the
    targets' order (an attention edit or guidance for one group is one for all, as for one batch of targets)."""

    inner: Strategy
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.inner.name

    def __call__(self, case: Case) -> Intervention:
        eps = case.eps_model
        groups = eps.groups() if isinstance(eps, RowsEps) else []
        if not isinstance(eps, RowsEps) or len(groups) < 2:
            return self.inner(case)
        cond, by_row, attention = case.cond.clone(), {}, None
        for rows in groups:
            part = self.inner(
                replace(
                    case,
                    eps_model=RowsEps(eps.model, eps.t, take_added(eps.added, rows)),
                    x=case.x[rows],
                    cond=case.cond[rows],
                    eps_empty=case.eps_empty[rows],
                    keep=[case.keep[i] for i in rows],
                    scores=[case.scores[i] for i in rows],
                )
            )
            cond[rows] = part.cond.to(cond.dtype)
            attention = attention or part.attention
            for j, i in enumerate(rows):
                by_row[i] = (part.reports[j], part.guidance[j] if part.guidance else None)
        reports = [by_row[i][0] for i in range(len(case.scores))]
        guidance = [by_row[i][1] for i in range(len(case.scores))]
        if len({g is None for g in guidance}) > 1:
            raise ValueError(f"strategy {self.inner.name!r} scheduled guidance for some prompts only")
        return Intervention(cond, reports, attention, None if guidance[0] is None else guidance)
