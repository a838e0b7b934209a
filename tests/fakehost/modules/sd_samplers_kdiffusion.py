"""Mirrors ``modules/sd_samplers_kdiffusion.py`` of A1111 1.10.1: ``CFGDenoiserKDiffusion`` and
``KDiffusionSampler`` (``get_sigmas``, ``sample``, ``sample_img2img``).

Samplers: "DPM++ 2M" (Karras schedule by default), "Euler a" and "Euler" (the model's own schedule). The other
k-diffusion samplers of the host are listed in :data:`samplers_k_diffusion_not_mirrored`; asking for one raises
NotImplementedError instead of silently falling back.

``CFGDenoiserKDiffusion.inner_model`` is the model's own ``create_denoiser()`` when it has one (SD3), else
``k_diffusion.external.CompVisDenoiser(shared.sd_model)`` (or ``CompVisVDenoiser`` for v models): called with
``(x, sigma, cond=...)`` it returns the x0 estimate ``x - sigma * eps(x / sqrt(sigma^2 + 1), sigma_to_t(sigma))``;
it has ``sigmas``, ``sigma_to_t``, ``t_to_sigma``.
``sample`` scales the initial noise by ``sigmas[0]``; ``sample_img2img`` (the hires pass) starts at
``sigma_sched[0]`` with ``x + noise * sigma_sched[0]`` and runs ``t_enc + 1`` steps.
"""

from __future__ import annotations

import inspect
from typing import Any

import k_diffusion.external
import k_diffusion.sampling
import torch
from modules import devices, sd_samplers_cfg_denoiser, sd_samplers_common, sd_schedulers, shared
from modules.script_callbacks import ExtraNoiseParams, extra_noise_callback
from modules.sd_samplers_cfg_denoiser import CFGDenoiser  # noqa: F401
from modules.shared import opts

samplers_k_diffusion = [
    ("DPM++ 2M", "sample_dpmpp_2m", ["k_dpmpp_2m"], {"scheduler": "karras"}),
    ("Euler a", "sample_euler_ancestral", ["k_euler_a", "k_euler_ancestral"], {"uses_ensd": True}),
    ("Euler", "sample_euler", ["k_euler"], {}),
]
samplers_k_diffusion_not_mirrored = [
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Heun",
    "DPM++ 2S a",
    "DPM++ 3M SDE",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM fast",
    "DPM adaptive",
    "Restart",
]

samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(
        label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model), aliases, options
    )
    for label, funcname, aliases, options in samplers_k_diffusion
]

sampler_extra_params = {
    "sample_euler": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
}

k_diffusion_samplers_map = {x.name: x for x in samplers_data_k_diffusion}


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self) -> Any:
        if self.model_wrap is None:
            denoiser_constructor = getattr(shared.sd_model, "create_denoiser", None)  # SD3: its own flow denoiser
            if denoiser_constructor is not None:
                self.model_wrap = denoiser_constructor()
                return self.model_wrap
            denoiser = (
                k_diffusion.external.CompVisVDenoiser
                if shared.sd_model.parameterization == "v"
                else k_diffusion.external.CompVisDenoiser
            )
            self.model_wrap = denoiser(shared.sd_model, quantize=opts.enable_quantization)
        return self.model_wrap


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname: str, sd_model: Any, options: dict | None = None):
        super().__init__(funcname)
        self.extra_params = sampler_extra_params.get(funcname, [])
        self.options = options or {}
        self.func = funcname if callable(funcname) else getattr(k_diffusion.sampling, self.funcname)
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p: Any, steps: int) -> torch.Tensor:
        """The sigma schedule for ``steps`` steps (plus the final 0), recording the schedule type in the infotext."""
        discard = self.config is not None and self.config.options.get("discard_next_to_last_sigma", False)
        if opts.always_discard_next_to_last_sigma and not discard:
            discard = True
            p.extra_generation_params["Discard penultimate sigma"] = True
        steps += 1 if discard else 0

        scheduler_name = (p.hr_scheduler if p.is_hr_pass else p.scheduler) or "Automatic"
        if scheduler_name == "Automatic":
            scheduler_name = self.config.options.get("scheduler", None)
        scheduler = sd_schedulers.schedulers_map.get(scheduler_name)

        m_sigma_min, m_sigma_max = self.model_wrap.sigmas[0].item(), self.model_wrap.sigmas[-1].item()
        sigma_min, sigma_max = (0.1, 10) if opts.use_old_karras_scheduler_sigmas else (m_sigma_min, m_sigma_max)

        if p.sampler_noise_scheduler_override:
            sigmas = p.sampler_noise_scheduler_override(steps)
        elif scheduler is None or scheduler.function is None:
            sigmas = self.model_wrap.get_sigmas(steps)
        else:
            kwargs: dict = {"sigma_min": sigma_min, "sigma_max": sigma_max}
            if scheduler.label != "Automatic" and not p.is_hr_pass:
                p.extra_generation_params["Schedule type"] = scheduler.label
            elif scheduler.label != p.extra_generation_params.get("Schedule type"):
                p.extra_generation_params["Hires schedule type"] = scheduler.label
            if opts.sigma_min != 0 and opts.sigma_min != m_sigma_min:
                kwargs["sigma_min"] = opts.sigma_min
                p.extra_generation_params["Schedule min sigma"] = opts.sigma_min
            if opts.sigma_max != 0 and opts.sigma_max != m_sigma_max:
                kwargs["sigma_max"] = opts.sigma_max
                p.extra_generation_params["Schedule max sigma"] = opts.sigma_max
            if scheduler.default_rho != -1 and opts.rho != 0 and opts.rho != scheduler.default_rho:
                kwargs["rho"] = opts.rho
                p.extra_generation_params["Schedule rho"] = opts.rho
            if scheduler.need_inner_model:
                kwargs["inner_model"] = self.model_wrap
            sigmas = scheduler.function(n=steps, **kwargs, device=devices.cpu)

        if discard:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas.cpu()

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
        """Denoise ``x`` (re-noised to the schedule's ``t_enc``) for ``t_enc + 1`` steps (hires pass)."""
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1 :]
        xi = x + noise * sigma_sched[0]
        if opts.img2img_extra_noise > 0:
            p.extra_generation_params["Extra noise"] = opts.img2img_extra_noise
            params = ExtraNoiseParams(noise, x, xi)
            extra_noise_callback(params)
            noise = params.noise
            xi += noise * opts.img2img_extra_noise

        kwargs = self.initialize(p)
        parameters = inspect.signature(self.func).parameters
        if "sigma_min" in parameters:
            kwargs["sigma_min"] = sigma_sched[-2]
        if "sigma_max" in parameters:
            kwargs["sigma_max"] = sigma_sched[0]
        if "n" in parameters:
            kwargs["n"] = len(sigma_sched) - 1
        if "sigma_sched" in parameters:
            kwargs["sigma_sched"] = sigma_sched
        if "sigmas" in parameters:
            kwargs["sigmas"] = sigma_sched
        if self.config.options.get("brownian_noise", False):
            kwargs["noise_sampler"] = self.create_noise_sampler(x, sigmas, p)

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
        """txt2img: unit noise ``x`` scaled to ``sigmas[0]``, then the sampling function over all sigmas."""
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        if opts.sgm_noise_multiplier:
            p.extra_generation_params["SGM noise multiplier"] = True
            x = x * torch.sqrt(1.0 + sigmas[0] ** 2.0)
        else:
            x = x * sigmas[0]

        kwargs = self.initialize(p)
        parameters = inspect.signature(self.func).parameters
        if "n" in parameters:
            kwargs["n"] = steps
        if "sigma_min" in parameters:
            kwargs["sigma_min"] = self.model_wrap.sigmas[0].item()
            kwargs["sigma_max"] = self.model_wrap.sigmas[-1].item()
        if "sigmas" in parameters:
            kwargs["sigmas"] = sigmas
        if self.config.options.get("brownian_noise", False):
            kwargs["noise_sampler"] = self.create_noise_sampler(x, sigmas, p)

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
