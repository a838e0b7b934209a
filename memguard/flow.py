"""The first-step flow every host runs (the command line's pipeline, A1111, Forge): score -> case -> strategy ->
apply -> cost.

The host reads Wen's ``d`` per image at the first sampling step; :func:`first_step` judges it against the threshold
(``score > threshold``, :func:`memguard.detect.judge`), picks the images to mitigate (flagged ones, or every scorable
one when forced), has the host build the strategy's :class:`~memguard.mitigate.base.Case` for them, runs the
strategy, has the host make the intervention take effect (new conditioning rows, attention edit, guidance schedule)
and re-evaluate the first step, and books the cost in each image's report. A host that must never fail its
generation passes ``abandon``: a strategy that fails is then dropped before it takes effect.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .detect import Detection, judge
from .mitigate.base import Case, Intervention, Strategy
from .tokens import CONTEXT

log = logging.getLogger("memguard")


@dataclass
class FirstStep:
    """What the first step decided: a verdict per image, the images mitigated and how (or why not)."""

    detections: list[Detection]
    targets: list[int] = field(default_factory=list)
    intervention: Intervention | None = None
    failed: str = ""  # why the strategy was abandoned ("" when it ran or none was asked for)


def bos_positions(length: int) -> list[int]:
    """The BOS position of every 77-token chunk of a conditioning ``length`` long (``k * 77``)."""
    return list(range(0, length, CONTEXT))


def target_score(threshold: float | None, scores: Sequence[float]) -> float:
    """The score a strategy must get below: the threshold, or half the lowest score when nothing is calibrated (a
    forced mitigation)."""
    return threshold if threshold is not None else min(scores) / 2


def first_step(
    scores: Sequence[float],
    threshold: float | None,
    *,
    strategy: Strategy | None = None,
    force: bool = False,
    case: Callable[[list[int], float], Case] | None = None,
    apply: Callable[[list[int], Case, Intervention], int] | None = None,
    abandon: Callable[[], None] | None = None,
    **judged,
) -> FirstStep:
    """Judge ``scores`` (keyword arguments go to :func:`~memguard.detect.judge`) and, with a ``strategy``, mitigate
    the targets: ``case(targets, target)`` builds the strategy's input (``target``: the score to get below,
    :func:`target_score`), ``apply(targets, case, intervention)`` makes it take
    effect and returns the extra UNet forwards per row it took, booked with the wall time in every report. With
    ``abandon``, a failure (out of memory, say) calls it, frees memory and is returned in ``failed``; without, it
    raises."""
    detections = judge(scores, threshold, **judged)
    targets = [i for i, d in enumerate(detections) if d.scorable and (force or d.flagged)]
    outcome = FirstStep(detections, targets)
    if strategy is None or not targets or case is None or apply is None:
        return outcome
    started = time.perf_counter()
    try:
        built = case(targets, target_score(threshold, [d.score for d in detections if d.score is not None]))
        intervention = strategy(built)
        forwards = apply(targets, built, intervention)
    except Exception as err:
        if abandon is None:
            raise
        log.error("memguard: mitigation failed\n%s", traceback.format_exc())
        abandon()
        outcome.failed = f"{type(err).__name__}: {err}"
    else:
        seconds = (time.perf_counter() - started) / max(len(intervention.reports), 1)
        for report in intervention.reports:
            report.unet_forwards += forwards
            report.seconds = max(report.seconds, seconds)
        outcome.intervention = intervention
        return outcome
    free_memory()  # outside the handler, once the traceback (and the optimizer's tensors) are gone
    return outcome


def free_memory() -> None:
    """Return the allocator's cached blocks after a failure such as running out of memory (CUDA only)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
