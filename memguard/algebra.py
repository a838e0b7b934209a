"""Prediction algebra: turn what a sampler computed into ``eps``, and find each image's rows in a CFG batch.

Notation follows the diffusion literature: ``x_t = alpha_t * x0 + sigma_t * eps`` for the DDPM (variance-preserving)
latent with ``alpha_t = sqrt(abar_t)`` and ``sigma_t = sqrt(1 - abar_t)``; k-diffusion samplers use the
variance-exploding scaling ``x = x0 + sigma * eps`` with ``sigma = sigma_t / alpha_t``.

* k-diffusion (Karras et al. 2022, eq. 7 with ``D(x; sigma)`` the denoiser): ``eps = (x - x0) / sigma``. It holds for
  eps- and v-parameterized networks alike because the wrapper returns the x0 estimate in both cases.
* eps-prediction: the network output is ``eps`` itself.
* v-prediction (Salimans & Ho 2022, eq. 10): ``v = alpha_t * eps - sigma_t * x0`` hence
  ``eps = alpha_t * v + sigma_t * x_t``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def _per_row(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or a per-row vector against a ``(N, C, H, W)`` tensor."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return value.reshape(-1, *([1] * (like.ndim - 1))) if value.ndim else value


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``eps = (x - x0) / sigma`` for a k-diffusion latent ``x = x0 + sigma * eps`` (Karras et al. 2022)."""
    return (x - x0) / _per_row(sigma, x)


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, abar: torch.Tensor | float) -> torch.Tensor:
    """``eps = sqrt(abar) * v + sqrt(1 - abar) * x_t`` for a v-prediction (Salimans & Ho 2022, eq. 10)."""
    abar = _per_row(abar, x_t)
    return abar.sqrt() * v + (1 - abar).sqrt() * x_t


@dataclass(frozen=True)
class BatchLayout:
    """Which rows of a CFG batch carry which image, as the WebUI lays them out.

    ``cond_rows[i]`` lists the conditional rows of image ``i`` (one per ``AND`` sub-prompt) with their weights;
    all conditional rows come first, then one unconditional row per image (A1111 1.10.1,
    ``modules/sd_samplers_cfg_denoiser.py``, ``CFGDenoiser.forward``). Extra rows that memguard appends (empty-prompt
    references) follow the unconditional rows, one per image.
    """

    cond_rows: tuple[tuple[tuple[int, float], ...], ...]

    @classmethod
    def plain(cls, batch: int) -> BatchLayout:
        """One prompt per image, no AND: rows ``0..B-1`` conditional, ``B..2B-1`` unconditional."""
        return cls(tuple(((i, 1.0),) for i in range(batch)))

    @classmethod
    def from_conds_list(cls, conds_list: Sequence[Sequence[tuple[int, float]]]) -> BatchLayout:
        """From the host's ``conds_list`` (``prompt_parser.reconstruct_multicond_batch``), ``[[(row, w)]]``."""
        return cls(tuple(tuple((int(r), float(w)) for r, w in rows) for rows in conds_list))

    @property
    def batch(self) -> int:
        return len(self.cond_rows)

    @property
    def n_cond(self) -> int:
        return sum(len(rows) for rows in self.cond_rows)

    def uncond_row(self, image: int) -> int:
        return self.n_cond + image

    def image_of_rows(self) -> list[int]:
        """Image index of every conditional row, in row order."""
        owner = [0] * self.n_cond
        for image, rows in enumerate(self.cond_rows):
            for r, _ in rows:
                owner[r] = image
        return owner


def cond_deltas(eps: torch.Tensor, layout: BatchLayout, reference: torch.Tensor | None = None) -> torch.Tensor:
    """``eps(x, c_k) - eps(x, c_ref)`` for every conditional row ``k``, shape ``(n_cond, C, H, W)``.

    ``eps`` is the host's whole batch (conditional rows, then unconditional rows). The reference of the row's image is
    its unconditional row, or ``reference[image]`` when given (the empty-prompt prediction memguard computed itself
    because the host's unconditional was a negative prompt or was skipped).
    """
    owner = torch.tensor(layout.image_of_rows(), device=eps.device)
    ref = reference if reference is not None else eps[layout.n_cond : layout.n_cond + layout.batch]
    return eps[: layout.n_cond] - ref[owner]
