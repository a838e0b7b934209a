"""The Memorization tab's and the HTTP API's :class:`memguard.service.Service` on Forge
(``lllyasviel/stable-diffusion-webui-forge``): the same protocol as :class:`A1111Service`, with Forge's model interface.

Reading (Forge's source; behaviour mirrored, no code taken):

* ``shared.sd_model`` is a ``ForgeDiffusionEngine``: ``get_learned_conditioning`` (a tensor, or SDXL's
  ``{"crossattn", "vector"}``) as on A1111, but no ``model.diffusion_model`` and no ``apply_model``; the UNet is
  ``forge_objects.unet`` (a ``UnetPatcher``) whose ``model`` is a ``KModel`` (``backend/modules/k_model.py``):
  ``apply_model(x, sigma, c_crossattn=..., transformer_options=..., y=...)`` returns the **x0** prediction of the
  k-diffusion input ``x = x_ddpm * sqrt(sigma^2 + 1)``; ``predictor.sigma(t)`` maps a timestep to its sigma;
* outside sampling the UNet may sit offloaded: ``backend/sampling/sampling_function.py: sampling_prepare`` moves it
  with ``backend.memory_management.load_models_gpu([unet], memory_required=...)`` first, which memguard does too;
* ``backend/loader.py: forge_loader`` builds the weights under ``torch.inference_mode()``: they are inference tensors
  and refuse a backward pass, so token significance falls back to occlusion (``A1111Service._significance``).

The protocol is unchanged: ``x_T`` from the seed (unit Gaussian, CPU generator) at model timestep 999, its ``eps``
read from the x0 prediction (``eps = (x - x0) / sigma``), the empty prompt as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...explain import OCCLUSION_ROWS
from ..a1111.host import native_latent
from ..a1111.service import T_FIRST, A1111Service
from .denoiser import ForgeDenoiser, schedule


@dataclass
class ForgeService(A1111Service):
    """:class:`A1111Service` over Forge's ``forge_objects.unet`` (see the module docstring)."""

    def _model(self) -> Any:
        """Forge loads the selected checkpoint lazily, at the first generation (``modules/sd_models.py:
        forge_model_reload``, a no-op once loaded); the tab and the API, when they come first, load it the same way."""
        from modules import sd_models, shared

        if getattr(shared.sd_model, "forge_objects", None) is None and hasattr(sd_models, "forge_model_reload"):
            sd_models.forge_model_reload()
        return super()._model()

    def model_id(self) -> str:
        self._model()
        return super().model_id()

    def _patcher(self) -> Any:
        objects = getattr(self._model(), "forge_objects", None)
        if objects is None:
            raise RuntimeError("the loaded model has no forge_objects (not a Forge model)")
        return objects.unet

    def _network(self) -> torch.nn.Module:
        return self._patcher().model.diffusion_model

    def _prepare(self) -> None:
        """Forge's ``sampling_prepare`` step: its memory manager loads the UNet, for calls of up to
        :data:`OCCLUSION_ROWS` rows (the tab's seeds are as many at most), before memguard reads its device and
        calls it."""
        try:
            from backend import memory_management
        except ImportError:
            return
        patcher = self._patcher()
        shape = native_latent(self._network(), self._model())
        required = patcher.memory_required([2 * OCCLUSION_ROWS, *shape]) if hasattr(patcher, "memory_required") else 0
        memory_management.load_models_gpu([patcher], memory_required=required)

    def _eps(self, x: torch.Tensor, cond: Any) -> torch.Tensor:
        patcher = self._patcher()
        sigma = schedule(patcher.model).sigma(torch.full((x.shape[0],), float(T_FIRST))).to(x.device)
        x_k = x * (sigma**2 + 1).sqrt().view(-1, *([1] * (x.ndim - 1)))
        return ForgeDenoiser(patcher).eps(x_k, sigma, cond)
