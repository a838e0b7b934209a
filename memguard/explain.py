"""Token-wise significance: which words of the prompt drive the memorization score.

Wen et al., ICLR 2024, Sec. 4 ("explaining"): the significance of token ``i`` is the magnitude of the gradient of
the detection loss with respect to that token's text embedding,

    s_i = || d/d e_i  sum_j || eps(x_T^j, e) - eps(x_T^j, e_empty) ||_2 ||_2

with ``e`` the conditional embedding (the text encoder's output the UNet attends to), the inner norm per image ``j``
and the outer one over the embedding channels of position ``i``. BOS, EOS and padding positions are left out; the
gradient flows through the UNet only.

Deliberate choice (the methods dossier, Sec. 1.6 item 7): Wen's released code scores tokens on a trajectory sampled
with reversed guidance; memguard scores under the normal CFG trajectory the user actually samples, at the first step
by default (``x_T``, where memorization is decided). The loss magnitude is the same either way.

Where the host's weights cannot take part in a backward pass (Forge builds them under ``torch.inference_mode()``),
:func:`token_occlusion` is the gradient-free stand-in: how much ``d`` drops when one token's embedding is replaced
by the empty prompt's embedding at the same position (one UNet row per token and seed, no gradients).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .detect import wen_norm
from .tokens import Tokenized

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OCCLUSION_ROWS = 16  # UNet rows per call of token_occlusion


def token_gradients(eps_model: EpsModel, x: torch.Tensor, cond: torch.Tensor, eps_empty: torch.Tensor) -> torch.Tensor:
    """Per-position gradient magnitude of ``sum_j d_j`` w.r.t. ``cond``, averaged over the rows ``j``; shape ``(L,)``.

    ``x`` holds ``n`` noisy samples (e.g. ``n`` seeds), ``cond`` their ``n`` conditional rows ``(n, L, C)``, and
    ``eps_empty`` the empty-prompt predictions on the same ``x`` (no gradient needed: they do not depend on ``cond``).
    """
    with torch.enable_grad():
        e = cond.detach().clone().requires_grad_(True)
        delta = eps_model(x, e).float() - eps_empty.detach().float()
        loss = delta.flatten(1).norm(dim=1).sum()
        (grad,) = torch.autograd.grad(loss, e)
    return grad.float().norm(dim=-1).mean(dim=0).detach()


def token_occlusion(
    eps_model: EpsModel,
    x: torch.Tensor,
    cond: torch.Tensor,
    eps_empty: torch.Tensor,
    empty: torch.Tensor,
    positions: Sequence[int],
    rows_per_call: int = OCCLUSION_ROWS,
) -> torch.Tensor:
    """Per-position drop of ``d`` when that position's embedding is swapped for the empty prompt's, averaged over
    the rows ``j``, clamped at 0 (a token whose removal raises ``d`` does not drive it); shape ``(L,)``, zero at
    positions not in ``positions``.

    ``s_i = mean_j max(0, d_j(e) - d_j(e with e_i := e_empty,i))``, ``d_j(e) = ||eps(x_T^j, e) - eps(x_T^j, "")||_2``
    (Wen et al. 2024, Sec. 3.1), with ``empty`` the empty prompt's embedding ``(1 or n, L', C)``: one 77-token chunk
    against a prompt of several is tiled (position ``i`` takes the empty chunk's ``i mod L'``, as the host pads with
    empty chunks). Costs ``len(positions) * n`` UNet rows, in calls of at most ``rows_per_call`` rows.
    """
    n, length = cond.shape[0], cond.shape[1]
    with torch.no_grad():
        full = wen_norm(eps_model(x, cond) - eps_empty)
        jobs = [(p, j) for p in positions for j in range(n)]
        drops = torch.zeros(length, dtype=torch.float32)
        for start in range(0, len(jobs), rows_per_call):
            part = jobs[start : start + rows_per_call]
            rows = [j for _, j in part]
            occluded = cond[rows].clone()
            for k, (p, j) in enumerate(part):
                occluded[k, p] = empty[min(j, empty.shape[0] - 1), p % empty.shape[1]]
            d = wen_norm(eps_model(x[rows], occluded) - eps_empty[rows])
            for k, (p, j) in enumerate(part):
                drops[p] += float(torch.clamp(full[j] - d[k], min=0)) / n
    return drops


def significance(
    eps_model: EpsModel,
    x: torch.Tensor,
    cond: torch.Tensor,
    eps_empty: torch.Tensor,
    empty: torch.Tensor,
    positions: Sequence[int],
) -> tuple[torch.Tensor, str | None]:
    """Wen's :func:`token_gradients`; where the weights refuse a backward pass (inference tensors) or it runs out of
    memory, :func:`token_occlusion` instead, with a note saying so (``None`` for gradients)."""
    try:
        with torch.inference_mode(False):
            return token_gradients(eps_model, x, cond, eps_empty), None
    except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError too
        message = (str(err).splitlines() or [""])[0]
        reason = "the host keeps its weights as inference tensors" if "Inference tensors" in message else message
    values = token_occlusion(eps_model, x, cond, eps_empty, empty, positions)
    return values, f"word colours from occlusion (gradients are unavailable here: {reason})"


@dataclass(frozen=True)
class TokenScore:
    """One prompt piece with its character span, raw significance and its share of the prompt's maximum (0..1)."""

    text: str
    start: int
    end: int
    position: int
    value: float
    normalized: float


@dataclass(frozen=True)
class WordScore:
    """A word as typed (adjacent pieces joined), scored by its strongest piece."""

    text: str
    start: int
    end: int
    value: float
    normalized: float


@dataclass(frozen=True)
class Explanation:
    prompt: str
    tokens: list[TokenScore]

    def words(self) -> list[WordScore]:
        """Group pieces into the words the user typed: pieces that share characters, or letters that touch.

        A piece without a span (``start == -1``: the host's chunks could not be mapped to the prompt, e.g. textual
        inversion) is a word of its own, with the piece's text and the span ``(-1, -1)``.
        """
        groups: list[list[TokenScore]] = []
        for t in self.tokens:
            prev = groups[-1][-1] if groups else None
            if prev is not None and prev.start >= 0 and t.start >= 0:
                touching = t.start == prev.end and t.text[:1].isalnum() and prev.text[-1:].isalnum()
                if t.start < prev.end or touching:
                    groups[-1].append(t)
                    continue
            groups.append([t])
        out = []
        for g in groups:
            best = max(g, key=lambda t: t.value)
            start, end = g[0].start, max(t.end for t in g)
            text = self.prompt[start:end] if start >= 0 else g[0].text
            out.append(WordScore(text, start, end, best.value, best.normalized))
        return out

    def top(self, k: int = 3) -> list[WordScore]:
        return sorted(self.words(), key=lambda w: -w.value)[:k]

    def to_dict(self) -> dict:
        return {
            "tokens": [t.__dict__ for t in self.tokens],
            "words": [w.__dict__ for w in self.words()],
        }


def explain(tokenized: Tokenized, gradients: torch.Tensor | Sequence[float]) -> Explanation:
    """Attach per-position gradients to the prompt's pieces (positions ``k*77 + 1 .. k*77 + 75`` of chunk ``k``)."""
    values = [float(v) for v in torch.as_tensor(gradients).flatten().tolist()]
    kept = [t for t in tokenized.tokens if t.position < len(values)]
    peak = max((values[t.position] for t in kept), default=0.0)
    scale = peak if peak > 0 else 1.0
    return Explanation(
        prompt=tokenized.prompt,
        tokens=[
            TokenScore(t.text, t.start, t.end, t.position, values[t.position], values[t.position] / scale) for t in kept
        ],
    )
