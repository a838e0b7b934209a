"""Minimal double of ``modules/models/sd3/sd3_model.py`` of A1111 1.10.1: ``SD3Inferencer`` and ``SD3Denoiser``, what
memguard probes of an SD3 checkpoint.

Mirrored: ``create_denoiser()`` (``CFGDenoiserKDiffusion.inner_model`` uses it instead of ldm's ``CompVisDenoiser``):
an ``SD3Denoiser``, k-diffusion's ``DiscreteSchedule`` over the flow sigmas (``ModelSamplingDiscreteFlow``, shift 3)
whose ``forward`` is ``apply_model(x, sigma, cond)``; ``apply_model`` returns the flow model's ``x0 = x - sigma * out``;
``alphas_cumprod = 1 / (sigma^2 + 1)``; ``parameterization`` "eps" (as the host sets it); ``is_sd3``.
Not mirrored: the MMDiT (the tiny SD1 UNet stands in, so the conditioning stays SD1's tensor), the three text
encoders, 16 latent channels. Build one over a loaded model's ``memguard_model``.
"""

from __future__ import annotations

from typing import Any

import k_diffusion.external
import torch
from modules import devices, shared
from modules.sd_models import LatentDiffusion


def flow_sigmas(shift: float = 3.0, timesteps: int = 1000) -> torch.Tensor:
    """``ModelSamplingDiscreteFlow.sigmas``: ``shift * t / (1 + (shift - 1) t)`` for ``t = 1/1000 .. 1``."""
    t = torch.arange(1, timesteps + 1, 1) / timesteps
    return shift * t / (1 + (shift - 1) * t)


class SD3Denoiser(k_diffusion.external.DiscreteSchedule):
    def __init__(self, inner_model: Any, sigmas: torch.Tensor):
        super().__init__(sigmas, quantize=shared.opts.enable_quantization)
        self.inner_model = inner_model

    def forward(self, input: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.inner_model.apply_model(input, sigma, **kwargs)


class SD3Inferencer(LatentDiffusion):
    def __init__(self, mg_model: Any, shift: float = 3.0):
        super().__init__(mg_model)
        self.sigmas = flow_sigmas(shift)
        self.alphas_cumprod = 1 / (self.sigmas**2 + 1)
        self.parameterization = "eps"
        self.is_sd1, self.is_sd3 = False, True

    def create_denoiser(self) -> SD3Denoiser:
        return SD3Denoiser(self, self.sigmas)

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: Any, return_ids: bool = False) -> torch.Tensor:
        context = torch.cat(cond["c_crossattn"], 1) if isinstance(cond, dict) else cond
        timestep = (t * 1000).to(devices.dtype_unet)  # ModelSamplingDiscreteFlow.timestep
        out = self.model.diffusion_model(x.to(devices.dtype_unet), timestep, encoder_hidden_states=context).sample
        return x - out.float() * t.view(-1, *([1] * (x.ndim - 1)))
