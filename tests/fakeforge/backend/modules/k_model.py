"""Mirrors Forge's ``backend/modules/k_model.py`` (``KModel``) and ``k_prediction.py`` (``Prediction``).

``KModel.apply_model(x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs)``:
``t`` is sigma; the UNet sees ``x / sqrt(sigma^2 + 1)`` (``c_concat`` appended on channels) at the *nearest integer*
timestep of ``sigma`` (``Prediction.timestep``), and the eps (or v) output is turned into the x0 prediction
``x - sigma * eps`` (``calculate_denoised``). The schedule is the model's ``alphas_cumprod``.
"""

from __future__ import annotations

import torch


class Prediction(torch.nn.Module):
    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon", sigma_data: float = 1.0):
        super().__init__()
        self.prediction_type = prediction_type
        self.sigma_data = sigma_data
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.clamp(timestep.float(), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def calculate_input(self, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        return noise / (sigma**2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        if self.prediction_type == "v_prediction":
            denom = sigma**2 + self.sigma_data**2
            return model_input * self.sigma_data**2 / denom - model_output * sigma * self.sigma_data / denom**0.5
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        noise = noise * torch.sqrt(1.0 + sigma**2.0) if max_denoise else noise * sigma
        return noise + latent_image


class KModel(torch.nn.Module):
    def __init__(self, diffusion_model: torch.nn.Module, predictor: Prediction):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.predictor = predictor
        self.computation_dtype = next(diffusion_model.parameters()).dtype

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        sigma = t
        xc = self.predictor.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat], dim=1)
        dtype = self.computation_dtype
        context = c_crossattn.to(dtype)
        timestep = self.predictor.timestep(t).float()
        extra = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
        options = transformer_options or {}
        out = self.diffusion_model(
            xc.to(dtype), timestep, context=context, control=control, transformer_options=options, **extra
        ).float()
        return self.predictor.calculate_denoised(sigma, out, x)

    def memory_required(self, input_shape) -> int:
        return 0
