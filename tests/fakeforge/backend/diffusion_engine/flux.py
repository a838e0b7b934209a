"""Minimal doubles of Forge's flow-matching engines, ``backend/diffusion_engine/flux.py`` (``Flux``) and, through
``sd35.py``, ``StableDiffusion3``: what memguard probes is Forge's, the network is not.

Mirrored: the ``KModel`` predictor (``backend/modules/k_prediction.py``: ``PredictionFlux``, ``prediction_type ==
"const"``), ``use_distilled_cfg_scale`` (Flux dev: the guidance scale is a network input), the ``is_sd1`` / ``is_sd2``
/ ``is_sdxl`` / ``is_sd3`` flags of ``fix_for_webui_backward_compatibility``, ``text_processing_engine_l``, and the
k-diffusion schedule over the predictor's sigmas (``alphas_cumprod = 1 / (sigma^2 + 1)``, as A1111 does for SD3).
Not mirrored: the transformer (the tiny SD1 UNet stands in, so the conditioning stays SD1's tensor: no T5, no
``guidance`` entry) and Flux's own sampler tweaks. Build one over a loaded SD1 engine's model with :func:`flow_engine`.
"""

from __future__ import annotations

from typing import Any

import torch
from backend.diffusion_engine.sd15 import StableDiffusion
from backend.modules.k_prediction import PredictionFlux


class Flux(StableDiffusion):
    predictor_class: Any = PredictionFlux
    distilled = True

    def __init__(self, mg_model: Any):
        super().__init__(mg_model)
        predictor = self.predictor_class()
        self.alphas_cumprod = 1 / (predictor.sigmas**2 + 1)
        self.forge_objects.unet.model.predictor = predictor
        self.text_processing_engine_l = self.text_processing_engine
        del self.text_processing_engine
        self.use_distilled_cfg_scale = self.distilled
        self.is_sd1 = self.is_sd2 = self.is_sdxl = self.is_sd3 = False

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt: list[str]) -> torch.Tensor:
        return self.text_processing_engine_l(prompt)


def flow_engine(cls: type, mg_model: Any) -> Any:
    """An engine of ``cls`` over ``mg_model`` (weights already inference tensors from the first load)."""
    with torch.inference_mode(False):
        return cls(mg_model)
