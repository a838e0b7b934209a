"""Mirrors the flow-matching predictors of Forge's ``backend/modules/k_prediction.py`` (the DDPM ``Prediction`` is in
``k_model.py``): ``AbstractPrediction`` with ``prediction_type == "const"`` (the network's input is not rescaled, its
output is a velocity: ``x0 = x - sigma * out``; noise enters as ``sigma * noise + (1 - sigma) * latent``),
``PredictionDiscreteFlow`` (SD3: ``shift * t / (1 + (shift - 1) t)`` over 1000 steps, timestep ``sigma * 1000``) and
``PredictionFlux`` (Flux: the ``mu``-shifted schedule over ``pseudo_timestep_range`` steps, timestep ``sigma``).
"""

from __future__ import annotations

import math

import torch


class FlowPrediction(torch.nn.Module):
    """``AbstractPrediction(prediction_type="const")`` with a ``sigmas`` buffer."""

    def __init__(self, sigmas: torch.Tensor):
        super().__init__()
        self.sigma_data = 1.0
        self.prediction_type = "const"
        self.register_buffer("sigmas", sigmas.float())

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def calculate_input(self, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return sigma * noise + (1.0 - sigma) * latent_image


class PredictionDiscreteFlow(FlowPrediction):
    def __init__(self, shift: float = 1.0, timesteps: int = 1000):
        self.shift = shift
        super().__init__(self.sigma(torch.arange(1, timesteps + 1, 1)))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * 1000

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = timestep / 1000.0
        return t if self.shift == 1.0 else self.shift * t / (1 + (self.shift - 1) * t)


class PredictionFlux(FlowPrediction):
    def __init__(self, mu: float = 1.15, pseudo_timestep_range: int = 10000):
        self.mu = mu
        t = torch.arange(1, pseudo_timestep_range + 1, 1) / pseudo_timestep_range
        super().__init__(math.exp(mu) / (math.exp(mu) + (1 / t - 1)))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return timestep
