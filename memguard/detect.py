"""Detection scores and per-image verdicts.

Wen et al., ICLR 2024, Sec. 3.1 (and the metric restated by Jeon et al. 2025, App. D.1)::

    d = (1/T) sum_t || eps(x_t, e_p) - eps(x_t, e_empty) ||_2

where ``e_empty`` is the text encoder's embedding of the empty prompt ``""``, the norm is a plain L2 over the whole
latent of one image (not squared, not divided by its size), and the default is the first step only (``T = 1``).

Asthana & Belagiannis, ICLR 2026, "anisotropy" score: on the same pure-noise ``x_T``, evaluate the CFG pair again with
the network told a low-noise timestep, and add ``gamma2 * mean_pixels cos(eps_u, eps_c - eps_u)`` (cosine over the
channel axis at each spatial position) to ``gamma1 * d``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from .algebra import BatchLayout, cond_deltas


def wen_norm(delta: torch.Tensor) -> torch.Tensor:
    """Per-row ``||delta||_2`` over all non-batch axes, in float32 (Wen et al. 2024, Sec. 3.1)."""
    return delta.float().flatten(1).norm(dim=1)


def size_factor(size: Sequence[int], native: Sequence[int]) -> float:
    """``sqrt(h0 * w0 / (h * w))``: what turns ``d`` read on an ``h x w`` latent into the ``d`` of the model's native
    ``h0 x w0`` latent. ``d`` sums squared differences over every latent position, so it grows like the square root
    of the area when the per-position spread is the same (``bench/size_scaling.py`` measures it)."""
    h, w = int(size[-2]), int(size[-1])
    h0, w0 = int(native[-2]), int(native[-1])
    return math.sqrt(h0 * w0 / (h * w))


def size_normalized(d: float, size: Sequence[int], native: Sequence[int]) -> float:
    """Wen's ``d`` on an ``h x w`` latent as it reads at the native size (see :func:`size_factor`): one threshold,
    calibrated at the native size, for every image size and aspect ratio."""
    return d * size_factor(size, native)


def row_scores(eps: torch.Tensor, layout: BatchLayout, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Wen's magnitude for every conditional row of a host CFG batch (see ``algebra.cond_deltas``)."""
    return wen_norm(cond_deltas(eps, layout, reference))


def image_scores(rows: torch.Tensor, layout: BatchLayout) -> list[float]:
    """One score per image: the largest over its ``AND`` sub-prompts (any memorized part puts the image at risk);
    NaN when any sub-prompt is unscorable."""
    values = rows.detach().cpu().tolist()
    out = []
    for image_rows in layout.cond_rows:
        scores = [values[r] for r, _ in image_rows]
        out.append(max(scores) if all(math.isfinite(s) for s in scores) else math.nan)
    return out


def anisotropy(eps_uncond: torch.Tensor, eps_cond: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of ``cos(eps_u, eps_c - eps_u)`` along channels (Asthana & Belagiannis 2026), per row."""
    delta = (eps_cond - eps_uncond).float()
    return torch.nn.functional.cosine_similarity(eps_uncond.float(), delta, dim=1, eps=1e-8).flatten(1).mean(dim=1)


def combined_score(norm: torch.Tensor, cos: torch.Tensor, gamma1: float = 1.0, gamma2: float = 2.0) -> torch.Tensor:
    """``gamma1 * d + gamma2 * cos`` (Asthana & Belagiannis 2026; gamma = (1, 2) for SD1.4, (1, 0.1) for SD2)."""
    return gamma1 * norm + gamma2 * cos


@dataclass
class Detection:
    """Verdict for one image.

    ``score`` is ``None`` when the image could not be scored (NaN/inf predictions, or an error); ``reason`` says why.
    ``step`` is the sampler step the score was read at (0 = first), ``steps`` how many steps were averaged, and
    ``extra_pass`` whether memguard ran its own empty-prompt rows because the host had none to offer.
    """

    score: float | None
    threshold: float | None
    flagged: bool
    step: int = 0
    steps: int = 1
    extra_pass: bool = False
    method: str = "wen"
    reason: str = ""
    sub_scores: list[float] = field(default_factory=list)

    @property
    def scorable(self) -> bool:
        return self.score is not None

    def to_dict(self) -> dict:
        return asdict(self)


def judge(
    scores: Sequence[float],
    threshold: float | None,
    *,
    step: int = 0,
    steps: int = 1,
    extra_pass: bool = False,
    method: str = "wen",
    sub_scores: Sequence[Sequence[float]] | None = None,
) -> list[Detection]:
    """Compare scores with a threshold (flagged when ``score > threshold``); a non-finite score is 'cannot score'."""
    out = []
    for i, s in enumerate(scores):
        finite = s is not None and math.isfinite(s)
        out.append(
            Detection(
                score=float(s) if finite else None,
                threshold=threshold,
                flagged=bool(finite and threshold is not None and s > threshold),
                step=step,
                steps=steps,
                extra_pass=extra_pass,
                method=method,
                reason="" if finite else "the prediction was not finite (NaN or inf)",
                sub_scores=list(sub_scores[i]) if sub_scores is not None else [],
            )
        )
    return out


def unscorable(n: int, reason: str, threshold: float | None = None) -> list[Detection]:
    """``n`` verdicts that say memguard could not score the images, and why."""
    return [Detection(score=None, threshold=threshold, flagged=False, reason=reason) for _ in range(n)]
