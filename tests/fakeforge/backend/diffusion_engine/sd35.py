"""Minimal double of Forge's ``backend/diffusion_engine/sd35.py`` (``StableDiffusion3``): ``PredictionDiscreteFlow``
with ``shift=3.0`` (``prediction_type == "const"``), ``is_sd3``, no distilled guidance (it samples with CFG). The
rest is ``flux.Flux``'s stand-in (see there)."""

from __future__ import annotations

from backend.diffusion_engine.flux import Flux
from backend.modules.k_prediction import PredictionDiscreteFlow


class StableDiffusion3(Flux):
    distilled = False

    @staticmethod
    def predictor_class() -> PredictionDiscreteFlow:
        return PredictionDiscreteFlow(shift=3.0)

    def __init__(self, mg_model):
        super().__init__(mg_model)
        self.is_sd3 = True
