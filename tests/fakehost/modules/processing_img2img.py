"""Minimal double of ``StableDiffusionProcessingImg2Img`` (A1111 1.10.1 ``modules/processing.py``), exported by the
double's ``processing`` module under the host's name.

Mirrored: the dataclass fields extensions read (``init_images``, ``resize_mode``, ``denoising_strength``,
``image_cfg_scale``, ``mask``, ``inpainting_fill``...), ``init`` (the init image, resized to ``width`` x ``height``,
encoded into ``init_latent`` for the whole batch; "Denoising strength" in the infotext) and ``sample`` (fresh noise
from ``p.rng``, then ``sampler.sample_img2img(p, init_latent, noise, c, uc, image_conditioning=...)``: the first step
is the init image noised to ``sigma_sched[0]``, not pure noise). Not mirrored: masks and inpainting (a ``mask``
raises), resize modes other than a plain resize, color correction, scripts' init-image hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from modules import devices, sd_samplers, shared
from modules.processing import StableDiffusionProcessing


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    init_images: list = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float = None
    mask: Any = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float = None
    latent_mask: Any = None
    force_task_id: str = None

    image_mask: Any = field(default=None, init=False)
    nmask: torch.Tensor = field(default=None, init=False)
    image_conditioning: torch.Tensor = field(default=None, init=False)
    init_img_hash: str = field(default=None, init=False)
    mask_for_overlay: Any = field(default=None, init=False)
    init_latent: torch.Tensor = field(default=None, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.image_mask = self.mask
        self.mask = None
        self.initial_noise_multiplier = 1.0 if self.initial_noise_multiplier is None else self.initial_noise_multiplier

    def init(self, all_prompts, all_seeds, all_subseeds) -> None:
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        if self.image_mask is not None:
            raise NotImplementedError("inpainting masks are not mirrored by the fake host")
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        image = self.init_images[0].convert("RGB").resize((self.width, self.height))
        array = np.asarray(image).astype(np.float32) / 255.0
        tensor = torch.from_numpy(np.moveaxis(array, 2, 0))[None].repeat(self.batch_size, 1, 1, 1)
        tensor = (2.0 * tensor - 1.0).to(device=devices.device, dtype=devices.dtype_vae)
        self.init_latent = shared.sd_model.get_first_stage_encoding(shared.sd_model.encode_first_stage(tensor))
        self.image_conditioning = self.img2img_image_conditioning(tensor, self.init_latent)

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        x = self.rng.next()
        if self.initial_noise_multiplier != 1.0:
            self.extra_generation_params["Noise multiplier"] = self.initial_noise_multiplier
            x *= self.initial_noise_multiplier
        c, uc = conditioning, unconditional_conditioning
        return self.sampler.sample_img2img(self, self.init_latent, x, c, uc, image_conditioning=self.image_conditioning)

    def get_token_merging_ratio(self, for_hr: bool = False) -> float:
        return self.token_merging_ratio or shared.opts.token_merging_ratio_img2img or shared.opts.token_merging_ratio
