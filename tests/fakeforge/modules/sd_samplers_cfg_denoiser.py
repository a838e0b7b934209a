"""Forge overlay of ``modules/sd_samplers_cfg_denoiser.py`` (replaces the A1111 double's module of that name).

``CFGDenoiser.forward(x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond)`` as Forge has it:

1. ``InterruptedException`` on interrupt/skip; refiner switch (a no-op without a refiner, as in the double);
2. ``cond_composition, cond = reconstruct_multicond_batch(cond, self.step)``; uncond likewise;
3. ``cfg_denoiser_callback(CFGDenoiserParams(x, image_cond, sigma, ..., cond, uncond, self))`` with the *unbatched*
   ``x`` (one row per image); ``sampling_function`` reads the params afterwards, so edits take effect;
4. the hires pass uses ``p.hr_cfg``; skip-early CFG and NGMS only set ``cond_scale = 1.0`` (and the infotext keys);
5. ``denoised, cond_pred, uncond_pred = sampling_function(self, params, cond_scale, cond_composition)``
   (``backend/sampling/sampling_function.py``); ``last_noise_uncond`` when asked for;
6. ``sampler.last_latent = denoised``, live preview, ``cfg_after_cfg_callback`` (read back), ``self.step += 1``.

``cfg_denoised_callback`` is never called. Not mirrored: inpainting masks, DDIM's ``classic_ddim_eps_estimation``
(timestep samplers raise NotImplementedError: use a k-diffusion sampler).
"""

from __future__ import annotations

from typing import Any

import torch
from backend.sampling.sampling_function import sampling_function
from modules import prompt_parser, sd_samplers_common, shared
from modules.script_callbacks import (
    AfterCFGCallbackParams,
    CFGDenoiserParams,
    cfg_after_cfg_callback,
    cfg_denoiser_callback,
)
from modules.shared import opts, state


def catenate_conds(conds: list) -> Any:
    if not isinstance(conds[0], dict):
        return torch.cat(conds)
    return {key: torch.cat([c[key] for c in conds]) for key in conds[0]}


def subscript_cond(cond: Any, a: int, b: int) -> Any:
    if not isinstance(cond, dict):
        return cond[a:b]
    return {key: vec[a:b] for key, vec in cond.items()}


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler: Any):
        super().__init__()
        self.model_wrap: Any = None
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.steps: int | None = None
        self.total_steps: int | None = None
        self.step = 0
        self.image_cfg_scale = None
        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False
        self.sampler = sampler
        self.p: Any = None
        self.need_last_noise_uncond = False
        self.last_noise_uncond = None
        self.mask_before_denoising = False
        self.classic_ddim_eps_estimation = False

    @property
    def inner_model(self) -> Any:
        raise NotImplementedError()

    def get_pred_x0(self, x_in, x_out, sigma):
        return x_out

    def update_inner_model(self) -> None:
        self.model_wrap = None
        c, uc = self.p.get_conds()
        self.sampler.sampler_extra_args["cond"] = c
        self.sampler.sampler_extra_args["uncond"] = uc

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        from modules.sd_samplers_timesteps import CFGDenoiserTimesteps

        if isinstance(self, CFGDenoiserTimesteps):
            raise NotImplementedError("the Forge double mirrors k-diffusion samplers only")
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException
        if sd_samplers_common.apply_refiner(self, x):
            cond = self.sampler.sampler_extra_args["cond"]
            uncond = self.sampler.sampler_extra_args["uncond"]

        cond_composition, cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step) if uncond is not None else None

        params = CFGDenoiserParams(x, image_cond, sigma, state.sampling_step, state.sampling_steps, cond, uncond, self)
        cfg_denoiser_callback(params)

        if self.p.is_hr_pass:
            cond_scale = getattr(self.p, "hr_cfg", cond_scale)
        if shared.opts.skip_early_cond > 0 and self.step / self.total_steps <= shared.opts.skip_early_cond:
            cond_scale = 1.0
            self.p.extra_generation_params["Skip Early CFG"] = shared.opts.skip_early_cond
        elif (self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            cond_scale = 1.0
            self.p.extra_generation_params["NGMS"] = s_min_uncond
            if opts.s_min_uncond_all:
                self.p.extra_generation_params["NGMS all steps"] = opts.s_min_uncond_all

        denoised, cond_pred, uncond_pred = sampling_function(self, params, cond_scale, cond_composition)
        if self.need_last_noise_uncond:
            self.last_noise_uncond = (x - uncond_pred) / sigma[:, None, None, None]

        preview = self.sampler.last_latent = denoised
        sd_samplers_common.store_latent(preview)
        after = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after)
        denoised = after.x
        self.step += 1
        return denoised.to(device=x.device, dtype=x.dtype)
