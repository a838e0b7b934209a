"""Mirrors ``modules/sd_samplers_timesteps.py`` of A1111 1.10.1: ``CompVisTimestepsDenoiser``,
``CompVisTimestepsVDenoiser``, ``CFGDenoiserTimesteps`` and ``CompVisSampler`` (only "DDIM" is mirrored; "DDIM
CFG++", "PLMS" and "UniPC" raise NotImplementedError).

Here ``sigma`` is the integer timestep as a float tensor (e.g. 951.0), ``x`` is the DDPM latent
``sqrt(abar) * x0 + sqrt(1 - abar) * eps`` (the txt2img noise is used unscaled), and the inner model returns
**eps**. ``CFGDenoiserTimesteps`` sets ``mask_before_denoising`` and recovers x0 with ``alphas_cumprod[t]``.
Timesteps: ``clip(range(0, 1000, 1000 // steps) + 1, 0, 999)``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from modules import devices, sd_samplers_common, sd_samplers_timesteps_impl, shared
from modules.script_callbacks import ExtraNoiseParams, extra_noise_callback
from modules.sd_samplers_cfg_denoiser import CFGDenoiser
from modules.shared import opts

samplers_timesteps = [
    ("DDIM", sd_samplers_timesteps_impl.ddim, ["ddim"], {}),
]
samplers_timesteps_not_mirrored = ["DDIM CFG++", "PLMS", "UniPC"]

samplers_data_timesteps = [
    sd_samplers_common.SamplerData(
        label, lambda model, funcname=funcname: CompVisSampler(funcname, model), aliases, options
    )
    for label, funcname, aliases, options in samplers_timesteps
]


class CompVisTimestepsDenoiser(torch.nn.Module):
    """``forward(x, t, cond=...)`` = ``sd_model.apply_model(x, t, cond=...)`` = eps."""

    def __init__(self, model: Any, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.inner_model = model

    def forward(self, input: torch.Tensor, timesteps: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.inner_model.apply_model(input, timesteps, **kwargs)


class CompVisTimestepsVDenoiser(torch.nn.Module):
    """v-prediction models: converts the output to eps with ``alphas_cumprod[t]``."""

    def __init__(self, model: Any, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.inner_model = model

    def predict_eps_from_z_and_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        abar = self.inner_model.alphas_cumprod[t.to(torch.int)][:, None, None, None]
        return torch.sqrt(abar) * v + torch.sqrt(1 - abar) * x_t

    def forward(self, input: torch.Tensor, timesteps: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.predict_eps_from_z_and_v(input, timesteps, self.inner_model.apply_model(input, timesteps, **kwargs))


class CFGDenoiserTimesteps(CFGDenoiser):
    def __init__(self, sampler: Any):
        super().__init__(sampler)
        self.alphas = shared.sd_model.alphas_cumprod
        self.mask_before_denoising = True

    def get_pred_x0(self, x_in: torch.Tensor, x_out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        a_t = self.alphas[sigma.to(dtype=int)][:, None, None, None]
        return (x_in - (1 - a_t).sqrt() * x_out) / a_t.sqrt()

    @property
    def inner_model(self) -> Any:
        if self.model_wrap is None:
            denoiser = (
                CompVisTimestepsVDenoiser if shared.sd_model.parameterization == "v" else CompVisTimestepsDenoiser
            )
            self.model_wrap = denoiser(shared.sd_model)
        return self.model_wrap


class CompVisSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname: Any, sd_model: Any):
        super().__init__(funcname)
        self.eta_option_field = "eta_ddim"
        self.eta_infotext_field = "Eta DDIM"
        self.eta_default = 0.0
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_timesteps(self, p: Any, steps: int) -> torch.Tensor:
        discard = self.config is not None and self.config.options.get("discard_next_to_last_sigma", False)
        if opts.always_discard_next_to_last_sigma and not discard:
            discard = True
            p.extra_generation_params["Discard penultimate sigma"] = True
        steps += 1 if discard else 0
        return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps)), device=devices.device) + 1, 0, 999)

    def _extra_args(self, p: Any, conditioning: Any, unconditional_conditioning: Any, image_conditioning: Any) -> dict:
        return {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }

    def sample_img2img(
        self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None
    ):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        timesteps = self.get_timesteps(p, steps)
        timesteps_sched = timesteps[:t_enc]
        abar = shared.sd_model.alphas_cumprod[timesteps[t_enc]]
        xi = x * torch.sqrt(abar) + noise * torch.sqrt(1 - abar)
        if opts.img2img_extra_noise > 0:
            p.extra_generation_params["Extra noise"] = opts.img2img_extra_noise
            params = ExtraNoiseParams(noise, x, xi)
            extra_noise_callback(params)
            noise = params.noise
            xi += noise * opts.img2img_extra_noise * torch.sqrt(abar)

        kwargs = self.initialize(p)
        parameters = inspect.signature(self.func).parameters
        if "timesteps" in parameters:
            kwargs["timesteps"] = timesteps_sched
        if "is_img2img" in parameters:
            kwargs["is_img2img"] = True

        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        self.sampler_extra_args = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        samples = self.launch_sampling(
            t_enc + 1,
            lambda: self.func(
                self.model_wrap_cfg,
                xi,
                extra_args=self.sampler_extra_args,
                disable=False,
                callback=self.callback_state,
                **kwargs,
            ),
        )
        self.add_infotext(p)
        return samples

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        timesteps = self.get_timesteps(p, steps)
        kwargs = self.initialize(p)
        if "timesteps" in inspect.signature(self.func).parameters:
            kwargs["timesteps"] = timesteps
        self.last_latent = x
        self.sampler_extra_args = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        samples = self.launch_sampling(
            steps,
            lambda: self.func(
                self.model_wrap_cfg,
                x,
                extra_args=self.sampler_extra_args,
                disable=False,
                callback=self.callback_state,
                **kwargs,
            ),
        )
        self.add_infotext(p)
        return samples


VanillaStableDiffusionSampler = CompVisSampler
