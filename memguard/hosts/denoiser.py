"""The one call the shared host code makes into a backend's UNet (after k-diffusion's ``external.py`` wrappers): an
adapter per backend turns the host's own model call into ``eps``."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Denoiser(Protocol):
    """``eps(x, sigma, cond, image_cond)``: the network's noise prediction for latents ``x`` in the sampler's scaling
    at noise level ``sigma`` (or timestep, for timestep samplers), under the host's conditioning ``cond`` (a tensor or
    SDXL's dict) and image conditioning ``image_cond``. Gradients flow when the backend allows them."""

    def eps(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any, image_cond: torch.Tensor) -> torch.Tensor: ...
