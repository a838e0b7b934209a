"""Forge's denoiser adapter (:class:`memguard.hosts.denoiser.Denoiser`) and what memguard reads off Forge's model:
``backend/modules/k_model.py: KModel.apply_model`` returns the **x0** prediction of the k-diffusion input
``x = x_ddpm * sqrt(sigma^2 + 1)``; ``eps = (x - x0) / sigma``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ...algebra import eps_from_x0


def schedule(model: Any) -> Any:
    """The model's noise schedule (``timestep(sigma)``, ``sigma(t)``): Forge's ``KModel.predictor``, reForge's
    ComfyUI-style ``BaseModel.model_sampling``."""
    found = getattr(model, "predictor", None)
    return found if found is not None else model.model_sampling


def attention_function() -> Any:
    """The host's attention over projected ``q, k, v`` with ``heads`` heads: Forge's
    ``backend.attention.attention_function``, or reForge's ``ldm_patched.ldm.modules.attention.optimized_attention``
    (reForge has ``modules_forge`` but ComfyUI's ``ldm_patched`` backend; same call)."""
    try:
        from backend.attention import attention_function as found
    except ImportError:
        from ldm_patched.ldm.modules.attention import optimized_attention as found
    return found


@dataclass
class ForgeDenoiser:
    """``KModel.apply_model`` with the transformer options of ``unet``, the patcher that samples (other extensions'
    patches included), the rows marked as one cond (``role`` 0) or uncond (1) chunk of the images ``images`` (so
    memguard's attention edit finds its rows). No ControlNet residuals, no ``model_function_wrapper``."""

    unet: Any
    images: list[int] = field(default_factory=list)
    role: int = 0

    def x0(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any, image_cond: Any = None) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if isinstance(cond, dict):  # SDXL: {"crossattn", "vector"}
            context, kwargs["y"] = cond["crossattn"], cond["vector"]
        else:
            context = cond
        if torch.is_tensor(image_cond) and image_cond.shape[0] == x.shape[0] and image_cond.shape[2:] == x.shape[2:]:
            kwargs["c_concat"] = image_cond
        n = x.shape[0]
        options = dict(self.unet.model_options.get("transformer_options", {}))
        options.update(
            cond_or_uncond=[self.role],
            sigmas=sigma,
            cond_indices=list(range(n)) if self.role == 0 else [],
            uncond_indices=[] if self.role == 0 else list(range(n)),
            memguard_images=self.images,
        )
        return self.unet.model.apply_model(x, sigma, c_crossattn=context, transformer_options=options, **kwargs)

    def eps(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any, image_cond: Any = None) -> torch.Tensor:
        return eps_from_x0(x, self.x0(x, sigma, cond, image_cond), sigma)


def clone(value: Any) -> Any:
    """A normal (non-inference) copy of a tensor or a dict of tensors, made outside inference mode."""
    if isinstance(value, dict):
        return {k: v.clone() for k, v in value.items()}
    return value.clone()


def host_scale(denoised: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor) -> float:
    """The guidance scale ``k`` the host applied to one image, read off ``denoised = u + k (c - u)`` (this covers the
    hires scale, skip-early CFG, NGMS and AND weights alike). 1 when the host skipped the uncond (zeros)."""
    delta = (cond - uncond).double().flatten()
    norm = float(delta @ delta)
    return float((denoised - uncond).double().flatten() @ delta) / norm if norm > 0 else 1.0


def image_d(cond: torch.Tensor, uncond: torch.Tensor, sigma: torch.Tensor) -> float:
    """``||eps_c - eps_u||`` of one image from its two x0 predictions."""
    return float((cond - uncond).float().norm() / sigma)
