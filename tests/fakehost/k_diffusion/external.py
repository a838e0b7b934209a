"""k-diffusion's ``external`` wrappers for discrete-time (DDPM-trained) models, as A1111 uses them.

``CompVisDenoiser(model)``: ``sigmas = sqrt((1 - alphas_cumprod) / alphas_cumprod)`` (ascending, 1000 entries);
``forward(x, sigma, **kw)`` evaluates the eps model at ``x * c_in`` (``c_in = 1 / sqrt(sigma^2 + 1)``) and the
continuous timestep ``sigma_to_t(sigma)`` (log-sigma interpolation, or nearest index with ``quantize``) and
returns the denoised estimate ``x - sigma * eps``. ``CompVisVDenoiser`` does the same for v-prediction models.
"""

from __future__ import annotations

import torch

from .utils import append_dims, append_zero


class DiscreteSchedule(torch.nn.Module):
    """A sigma schedule defined at integer timesteps, interpolated in log-sigma between them."""

    def __init__(self, sigmas: torch.Tensor, quantize: bool):
        super().__init__()
        self.register_buffer("sigmas", sigmas)
        self.register_buffer("log_sigmas", sigmas.log())
        self.quantize = quantize

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def get_sigmas(self, n: int | None = None) -> torch.Tensor:
        """``n`` sigmas at timesteps evenly spaced from the last to 0, then a final 0."""
        if n is None:
            return append_zero(self.sigmas.flip(0))
        t = torch.linspace(len(self.sigmas) - 1, 0, n, device=self.sigmas.device)
        return append_zero(self.t_to_sigma(t))

    def sigma_to_t(self, sigma: torch.Tensor, quantize: bool | None = None) -> torch.Tensor:
        quantize = self.quantize if quantize is None else quantize
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        if quantize:
            return dists.abs().argmin(dim=0).view(sigma.shape)
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high = low + 1
        w = ((self.log_sigmas[low] - log_sigma) / (self.log_sigmas[low] - self.log_sigmas[high])).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()


class DiscreteEpsDDPMDenoiser(DiscreteSchedule):
    """Karras-style denoiser around an eps-predicting discrete-time model."""

    def __init__(self, model: torch.nn.Module, alphas_cumprod: torch.Tensor, quantize: bool):
        super().__init__(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, quantize)
        self.inner_model = model
        self.sigma_data = 1.0

    def get_scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c_out = -sigma
        c_in = 1 / (sigma**2 + self.sigma_data**2) ** 0.5
        return c_out, c_in

    def get_eps(self, *args, **kwargs) -> torch.Tensor:
        return self.inner_model(*args, **kwargs)

    def forward(self, input: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        c_out, c_in = (append_dims(s, input.ndim) for s in self.get_scalings(sigma))
        eps = self.get_eps(input * c_in, self.sigma_to_t(sigma), **kwargs)
        return input + eps * c_out


class CompVisDenoiser(DiscreteEpsDDPMDenoiser):
    """``inner_model`` is an ldm-style model; its ``apply_model`` gives eps."""

    def __init__(self, model: torch.nn.Module, quantize: bool = False, device: str = "cpu"):
        super().__init__(model, model.alphas_cumprod, quantize=quantize)

    def get_eps(self, *args, **kwargs) -> torch.Tensor:
        return self.inner_model.apply_model(*args, **kwargs)


class DiscreteVDDPMDenoiser(DiscreteSchedule):
    """Karras-style denoiser around a v-predicting discrete-time model."""

    def __init__(self, model: torch.nn.Module, alphas_cumprod: torch.Tensor, quantize: bool):
        super().__init__(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, quantize)
        self.inner_model = model
        self.sigma_data = 1.0

    def get_scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        denom = sigma**2 + self.sigma_data**2
        c_skip = self.sigma_data**2 / denom
        c_out = -sigma * self.sigma_data / denom**0.5
        c_in = 1 / denom**0.5
        return c_skip, c_out, c_in

    def get_v(self, *args, **kwargs) -> torch.Tensor:
        return self.inner_model(*args, **kwargs)

    def forward(self, input: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        c_skip, c_out, c_in = (append_dims(s, input.ndim) for s in self.get_scalings(sigma))
        return self.get_v(input * c_in, self.sigma_to_t(sigma), **kwargs) * c_out + input * c_skip


class CompVisVDenoiser(DiscreteVDDPMDenoiser):
    def __init__(self, model: torch.nn.Module, quantize: bool = False, device: str = "cpu"):
        super().__init__(model, model.alphas_cumprod, quantize=quantize)

    def get_v(self, x: torch.Tensor, t: torch.Tensor, cond: dict, **kwargs) -> torch.Tensor:
        return self.inner_model.apply_model(x, t, cond)
