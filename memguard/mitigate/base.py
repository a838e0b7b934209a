"""The one small interface every mitigation strategy implements.

At the first sampling step the host (the WebUI glue, the command line's pipeline) scores each image. For the images
to mitigate it builds a :class:`Case` and hands it to a strategy, which returns an :class:`Intervention`: the
conditional rows to sample with from now on, an optional cross-attention edit and an optional guidance schedule for
those images, and a :class:`Report` per image. The host then re-evaluates the first step for those images with the
intervention in force and carries on sampling; every other image of the batch is left exactly as it was.

On SDXL the conditioning is the cross-attention context *and* the pooled text vector (``text_embeds``, the first part
of sgm's ``vector``), which enters every block through the time embedding: a :class:`Case` then carries the rows'
``pooled`` beside ``cond``, a strategy may change both, and every evaluation passes each row's own (the size/crop
numbers stay the host's). SD1/SD2 have none (``pooled`` None).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch


class RowsModel(Protocol):
    """A Case's network: ``eps(x, cond, rows, pooled)`` for the case's rows ``rows`` (all, in order, when None), which
    ``x`` and ``cond`` hold; ``pooled`` (SDXL) their pooled text vectors in place of their own."""

    def __call__(
        self, x: torch.Tensor, cond: torch.Tensor, rows: Sequence[int] | None = None, pooled: torch.Tensor | None = None
    ) -> torch.Tensor: ...


@dataclass
class Case:
    """What a strategy may use, for the ``n`` images it must mitigate, at the first step.

    ``eps_model(x, cond, rows, pooled)`` returns the network's eps for latents in the sampler's own scaling at this
    step (:class:`RowsModel`); ``pooled`` the rows' pooled text vectors (SDXL; None without);
    ``eps_empty`` are the empty-prompt predictions on ``x``; ``keep[j]`` lists the sequence positions of row ``j``
    that are prompt tokens, BOS or the first EOS of a chunk (what Ren et al.'s padding mask keeps); ``bos`` the BOS
    positions (``k*77``); ``target`` the score to get below (the calibrated threshold unless set); ``model`` the
    network whose parameters stay frozen, ``checkpoint`` its blocks to recompute in backward passes.
    """

    eps_model: RowsModel
    x: torch.Tensor
    cond: torch.Tensor
    eps_empty: torch.Tensor
    keep: list[list[int]]
    bos: list[int]
    target: float
    scores: list[float]
    interrupted: Callable[[], bool] = lambda: False
    model: torch.nn.Module | None = None
    checkpoint: Sequence[torch.nn.Module] = ()
    pooled: torch.Tensor | None = None


@dataclass
class Report:
    """What a strategy did to one image and what it cost (UNet passes counted per image row)."""

    strategy: str
    score_before: float | None = None
    score_after: float | None = None
    iterations: int = 0
    unet_forwards: int = 0
    unet_backwards: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def unet_equivalents(self) -> float:
        """Cost in UNet forward evaluations, a backward counted as two forwards."""
        return self.unet_forwards + 2 * self.unet_backwards

    def to_dict(self) -> dict:
        return {**asdict(self), "unet_equivalents": self.unet_equivalents}


@dataclass(frozen=True)
class AttentionEdit:
    """Ren et al. 2024 cross-attention edit: multiply the BOS pre-softmax logit by ``c_bos``; drop padding keys."""

    c_bos: float = 1.25
    mask_padding: bool = True


@dataclass
class Intervention:
    """The rows to sample with (``cond``; ``pooled``, SDXL's pooled text vectors, None without), an attention edit, a
    guidance schedule per image, and a report per image."""

    cond: torch.Tensor
    reports: list[Report]
    attention: AttentionEdit | None = None
    guidance: list | None = None  # one GuidanceSchedule per image
    pooled: torch.Tensor | None = None


class Strategy(Protocol):
    name: str

    def __call__(self, case: Case) -> Intervention: ...


def still_above(mitigation: Mapping[str, Any] | None, threshold: float | None) -> bool:
    """Whether a mitigated image's re-scored first step (``score_after``) would still be flagged: ``> threshold``, the
    rule of :func:`memguard.detect.judge`. False when there is no mitigation, no re-score or no threshold."""
    after = (mitigation or {}).get("score_after")
    return threshold is not None and isinstance(after, int | float) and after > threshold


def merge(first: Intervention, second: Intervention) -> Intervention:
    """Combine two interventions on the same images; the second was computed on the first's conditioning."""
    reports = []
    for a, b in zip(first.reports, second.reports):
        reports.append(
            Report(
                strategy=f"{a.strategy}+{b.strategy}",
                score_before=a.score_before,
                iterations=a.iterations + b.iterations,
                unet_forwards=a.unet_forwards + b.unet_forwards,
                unet_backwards=a.unet_backwards + b.unet_backwards,
                seconds=a.seconds + b.seconds,
                notes=a.notes + b.notes,
            )
        )
    return Intervention(
        cond=second.cond,
        pooled=second.pooled,
        reports=reports,
        attention=second.attention or first.attention,
        guidance=second.guidance or first.guidance,
    )
