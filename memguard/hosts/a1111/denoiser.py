"""A1111's denoiser adapter (:class:`memguard.hosts.denoiser.Denoiser`): the CFG denoiser's ``inner_model`` (A1111
1.10 ``modules/sd_samplers_cfg_denoiser.py``: k-diffusion's wrapped model, whose output is ``x0``; or the timestep
samplers' ``modules/sd_samplers_timesteps.py``, whose output is ``eps`` and ``sigma`` the timestep)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...algebra import eps_from_x0
from .conditioning import condition


@dataclass
class CFGDenoiserAdapter:
    cfg_denoiser: Any
    timesteps: bool

    def eps(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any, image_cond: torch.Tensor) -> torch.Tensor:
        out = self.cfg_denoiser.inner_model(x, sigma, cond=condition(cond, image_cond))
        return out if self.timesteps else eps_from_x0(x, out, sigma)
