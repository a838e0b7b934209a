"""Mirrors ``modules/processing.py`` of A1111 1.10.1 for txt2img: ``StableDiffusionProcessing``,
``StableDiffusionProcessingTxt2Img`` (incl. the latent hires fix), ``Processed``, ``process_images``,
``process_images_inner``, ``create_infotext``, ``create_random_tensors``, ``decode_latent_batch``,
``get_fixed_seed`` / ``fix_seed``.

Flow of ``process_images(p)`` (same order as the host): ``scripts.before_process`` -> override settings applied ->
sampler/scheduler names fixed -> ``process_images_inner``: model name/hash, ``fill_fields_from_opts``,
``setup_prompts``, seeds (image ``i`` of the job gets ``seed + i``; the same seed for all when a variation strength
is set), ``scripts.process``; then under ``torch.no_grad()``: ``p.init``, and per batch ``n``: prompts/seeds slices,
``p.rng = ImageRNG((C, H // opt_f, W // opt_f), p.seeds, ...)``, ``before_process_batch``, extra-network tags
stripped, ``process_batch``, ``p.setup_conds()`` (cached conds, see ``get_conds_with_caching``), hijack comments and
params, ``params.txt`` (first batch), ``p.sample(...)``, ``post_sample``, decoding, ``postprocess_batch``,
``postprocess_batch_list``, per image ``postprocess_image`` -> ``postprocess_maskoverlay`` ->
``postprocess_image_after_composite`` -> saving -> ``create_infotext``; grid; ``Processed``; ``scripts.postprocess``;
settings restored.

Simplifications: the model works in pixel space, so ``opt_f`` is 1 (``p.width`` x ``p.height`` is the sample
size) and decoding is the identity; no face restoration, tiling, token merging or refiner; img2img is a minimal
double (``processing_img2img.py``, exported here as the host has it);
the hires fix supports latent upscalers only (any other ``hr_upscaler`` raises, as the host does for an unknown
upscaler name); ``program_version()`` is "v1.10.1".
"""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from modules import (
    devices,
    errors,
    extra_networks,
    images,
    infotext_utils,
    paths,
    prompt_parser,
    rng,
    scripts,
    sd_models,
    sd_samplers,
    sd_samplers_common,
    sd_vae,
    shared,
)
from modules.sd_hijack import model_hijack
from modules.sd_samplers_common import decode_first_stage
from modules.shared import cmd_opts, opts, state
from PIL import Image

opt_C = 4
opt_f = 1
"""Latent downscale factor. The host's is 8 (VAE); the double's model is pixel-space."""


def txt2img_image_conditioning(sd_model: Any, x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Dummy image conditioning of a plain cross-attention model: zeros of shape (B, 5, 1, 1)."""
    if sd_model.model.conditioning_key in {"hybrid", "concat", "crossattn-adm"} or sd_model.is_sdxl_inpaint:
        raise NotImplementedError("inpainting / unCLIP models are not mirrored by the fake host")
    return x.new_zeros(x.shape[0], 5, 1, 1, dtype=x.dtype, device=x.device)


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    prompt_for_display: str = None
    negative_prompt: str = ""
    styles: list[str] = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str = None
    scheduler: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool = None
    tiling: bool = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict[str, Any] = None
    overlay_images: list = None
    eta: float = None
    do_not_reload_embeddings: bool = False
    denoising_strength: float = None
    ddim_discretize: str = None
    s_min_uncond: float = None
    s_churn: float = None
    s_tmax: float = None
    s_tmin: float = None
    s_noise: float = None
    override_settings: dict[str, Any] = None
    override_settings_restore_afterwards: bool = True
    sampler_index: int = None
    refiner_checkpoint: str = None
    refiner_switch_at: float = None
    token_merging_ratio = 0
    token_merging_ratio_hr = 0
    disable_extra_networks: bool = False
    firstpass_image: Image.Image = None

    scripts_value: Any = field(default=None, init=False)
    script_args_value: Any = field(default=None, init=False)
    scripts_setup_complete: bool = field(default=False, init=False)

    cached_uc = [None, None]
    cached_c = [None, None]

    comments: dict = None
    sampler: Any = field(default=None, init=False)
    is_using_inpainting_conditioning: bool = field(default=False, init=False)
    paste_to: tuple | None = field(default=None, init=False)
    is_hr_pass: bool = field(default=False, init=False)
    c: Any = field(default=None, init=False)
    uc: Any = field(default=None, init=False)
    rng: Any = field(default=None, init=False)
    step_multiplier: int = field(default=1, init=False)
    color_corrections: list = field(default=None, init=False)
    all_prompts: list = field(default=None, init=False)
    all_negative_prompts: list = field(default=None, init=False)
    all_seeds: list = field(default=None, init=False)
    all_subseeds: list = field(default=None, init=False)
    iteration: int = field(default=0, init=False)
    main_prompt: str = field(default=None, init=False)
    main_negative_prompt: str = field(default=None, init=False)
    prompts: list = field(default=None, init=False)
    negative_prompts: list = field(default=None, init=False)
    seeds: list = field(default=None, init=False)
    subseeds: list = field(default=None, init=False)
    extra_network_data: dict = field(default=None, init=False)
    user: str = field(default=None, init=False)
    sd_model_name: str = field(default=None, init=False)
    sd_model_hash: str = field(default=None, init=False)
    sd_vae_name: str = field(default=None, init=False)
    sd_vae_hash: str = field(default=None, init=False)
    is_api: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.sampler_index is not None:
            print(
                "sampler_index argument for StableDiffusionProcessing does not do anything; use sampler_name",
                file=sys.stderr,
            )
        self.comments = {}
        if self.styles is None:
            self.styles = []
        self.sampler_noise_scheduler_override = None
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}
        self.script_args = self.script_args or {}
        self.refiner_checkpoint_info = None
        if not self.seed_enable_extras:
            self.subseed = -1
            self.subseed_strength = 0
            self.seed_resize_from_h = 0
            self.seed_resize_from_w = 0
        self.cached_uc = StableDiffusionProcessing.cached_uc
        self.cached_c = StableDiffusionProcessing.cached_c

    def fill_fields_from_opts(self) -> None:
        self.s_min_uncond = self.s_min_uncond if self.s_min_uncond is not None else opts.s_min_uncond
        self.s_churn = self.s_churn if self.s_churn is not None else opts.s_churn
        self.s_tmin = self.s_tmin if self.s_tmin is not None else opts.s_tmin
        self.s_tmax = (self.s_tmax if self.s_tmax is not None else opts.s_tmax) or float("inf")
        self.s_noise = self.s_noise if self.s_noise is not None else opts.s_noise

    @property
    def sd_model(self):  # noqa: F811 - the host also shadows its dataclass field with a property
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass

    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    def setup_scripts(self) -> None:
        self.scripts_setup_complete = True
        self.scripts.setup_scrips(self, is_ui=not self.is_api)

    def comment(self, text: str) -> None:
        """Shown under the image in the UI (``Processed.comments``); not part of the infotext or API ``info``."""
        self.comments[text] = 1

    def txt2img_image_conditioning(
        self, x: torch.Tensor, width: int | None = None, height: int | None = None
    ) -> torch.Tensor:
        self.is_using_inpainting_conditioning = self.sd_model.model.conditioning_key in {"hybrid", "concat"}
        return txt2img_image_conditioning(self.sd_model, x, width or self.width, height or self.height)

    def img2img_image_conditioning(self, source_image, latent_image, image_mask=None, round_image_mask=True):
        return latent_image.new_zeros(latent_image.shape[0], 5, 1, 1)

    def init(self, all_prompts, all_seeds, all_subseeds) -> None:
        pass

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        raise NotImplementedError()

    def close(self) -> None:
        self.sampler = None
        self.c = None
        self.uc = None
        if not opts.persistent_cond_cache:
            StableDiffusionProcessing.cached_c = [None, None]
            StableDiffusionProcessing.cached_uc = [None, None]

    def get_token_merging_ratio(self, for_hr: bool = False) -> float:
        if for_hr:
            return (
                self.token_merging_ratio_hr
                or opts.token_merging_ratio_hr
                or self.token_merging_ratio
                or opts.token_merging_ratio
            )
        return self.token_merging_ratio or opts.token_merging_ratio

    def setup_prompts(self) -> None:
        if isinstance(self.prompt, list):
            self.all_prompts = self.prompt
        elif isinstance(self.negative_prompt, list):
            self.all_prompts = [self.prompt] * len(self.negative_prompt)
        else:
            self.all_prompts = self.batch_size * self.n_iter * [self.prompt]
        if isinstance(self.negative_prompt, list):
            self.all_negative_prompts = self.negative_prompt
        else:
            self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)
        if len(self.all_prompts) != len(self.all_negative_prompts):
            raise RuntimeError(
                f"Received a different number of prompts ({len(self.all_prompts)}) "
                f"and negative prompts ({len(self.all_negative_prompts)})"
            )
        self.all_prompts = [shared.prompt_styles.apply_styles_to_prompt(x, self.styles) for x in self.all_prompts]
        self.all_negative_prompts = [
            shared.prompt_styles.apply_negative_styles_to_prompt(x, self.styles) for x in self.all_negative_prompts
        ]
        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]

    def cached_params(
        self, required_prompts, steps, extra_network_data, hires_steps=None, use_old_scheduling=False
    ) -> tuple:
        """Everything that invalidates the cond cache when it changes."""
        return (
            required_prompts,
            steps,
            hires_steps,
            use_old_scheduling,
            opts.CLIP_stop_at_last_layers,
            shared.sd_model.sd_checkpoint_info,
            extra_network_data,
            opts.sdxl_crop_left,
            opts.sdxl_crop_top,
            self.width,
            self.height,
            opts.fp8_storage,
            opts.cache_fp16_weight,
            opts.emphasis,
        )

    def get_conds_with_caching(self, function, required_prompts, steps, caches, extra_network_data, hires_steps=None):
        """``function(shared.sd_model, required_prompts, steps, hires_steps, use_old_scheduling)``, reusing the
        result stored in any of ``caches`` (each ``[params, result]``) for identical parameters; a miss stores
        into ``caches[0]``. The cached tensors are shared across generations: never edit them in place."""
        if opts.use_old_scheduling:
            old = prompt_parser.get_learned_conditioning_prompt_schedules(required_prompts, steps, hires_steps, False)
            new = prompt_parser.get_learned_conditioning_prompt_schedules(required_prompts, steps, hires_steps, True)
            if old != new:
                self.extra_generation_params["Old prompt editing timelines"] = True
        params = self.cached_params(required_prompts, steps, extra_network_data, hires_steps, opts.use_old_scheduling)
        for cache in caches:
            if cache[0] is not None and params == cache[0]:
                return cache[1]
        cache = caches[0]
        with devices.autocast():
            cache[1] = function(shared.sd_model, required_prompts, steps, hires_steps, opts.use_old_scheduling)
        cache[0] = params
        return cache[1]

    def setup_conds(self) -> None:
        prompts = prompt_parser.SdConditioning(self.prompts, width=self.width, height=self.height)
        negative_prompts = prompt_parser.SdConditioning(
            self.negative_prompts, width=self.width, height=self.height, is_negative_prompt=True
        )
        sampler_config = sd_samplers.find_sampler_config(self.sampler_name)
        total_steps = sampler_config.total_steps(self.steps) if sampler_config else self.steps
        self.step_multiplier = total_steps // self.steps
        self.firstpass_steps = total_steps
        self.uc = self.get_conds_with_caching(
            prompt_parser.get_learned_conditioning,
            negative_prompts,
            total_steps,
            [self.cached_uc],
            self.extra_network_data,
        )
        self.c = self.get_conds_with_caching(
            prompt_parser.get_multicond_learned_conditioning,
            prompts,
            total_steps,
            [self.cached_c],
            self.extra_network_data,
        )

    def get_conds(self):
        return self.c, self.uc

    def parse_extra_network_prompts(self) -> None:
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)

    def save_samples(self) -> bool:
        return (
            opts.samples_save
            and not self.do_not_save_samples
            and (opts.save_incomplete_images or (not state.interrupted and not state.skipped))
        )


class Processed:
    """The result of ``process_images``: ``images`` (PIL, grid first when one was made), ``info`` (first
    infotext), ``infotexts``, ``comments`` and the generation parameters; ``js()`` is what the UI/API return."""

    def __init__(
        self,
        p,
        images_list,
        seed=-1,
        info="",
        subseed=None,
        all_prompts=None,
        all_negative_prompts=None,
        all_seeds=None,
        all_subseeds=None,
        index_of_first_image=0,
        infotexts=None,
        comments="",
    ):
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.subseed = subseed
        self.subseed_strength = p.subseed_strength
        self.info = info
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.width = p.width
        self.height = p.height
        self.sampler_name = p.sampler_name
        self.cfg_scale = p.cfg_scale
        self.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.restore_faces = p.restore_faces
        self.face_restoration_model = opts.face_restoration_model if p.restore_faces else None
        self.sd_model_name = p.sd_model_name
        self.sd_model_hash = p.sd_model_hash
        self.sd_vae_name = p.sd_vae_name
        self.sd_vae_hash = p.sd_vae_hash
        self.seed_resize_from_w = p.seed_resize_from_w
        self.seed_resize_from_h = p.seed_resize_from_h
        self.denoising_strength = getattr(p, "denoising_strength", None)
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.styles = p.styles
        self.job_timestamp = state.job_timestamp
        self.clip_skip = opts.CLIP_stop_at_last_layers
        self.token_merging_ratio = p.token_merging_ratio
        self.token_merging_ratio_hr = p.token_merging_ratio_hr
        self.eta = p.eta
        self.ddim_discretize = p.ddim_discretize
        self.s_churn = p.s_churn
        self.s_tmin = p.s_tmin
        self.s_tmax = p.s_tmax
        self.s_noise = p.s_noise
        self.s_min_uncond = p.s_min_uncond
        self.sampler_noise_scheduler_override = p.sampler_noise_scheduler_override
        self.prompt = self.prompt if not isinstance(self.prompt, list) else self.prompt[0]
        self.negative_prompt = (
            self.negative_prompt if not isinstance(self.negative_prompt, list) else self.negative_prompt[0]
        )
        self.seed = int(self.seed if not isinstance(self.seed, list) else self.seed[0]) if self.seed is not None else -1
        self.subseed = (
            int(self.subseed if not isinstance(self.subseed, list) else self.subseed[0])
            if self.subseed is not None
            else -1
        )
        self.is_using_inpainting_conditioning = p.is_using_inpainting_conditioning
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [self.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info] * len(images_list)
        self.version = program_version()

    def js(self) -> str:
        """The generation-info JSON of the UI and the API's ``info`` (no ``comments``)."""
        obj = {
            "prompt": self.all_prompts[0],
            "all_prompts": self.all_prompts,
            "negative_prompt": self.all_negative_prompts[0],
            "all_negative_prompts": self.all_negative_prompts,
            "seed": self.seed,
            "all_seeds": self.all_seeds,
            "subseed": self.subseed,
            "all_subseeds": self.all_subseeds,
            "subseed_strength": self.subseed_strength,
            "width": self.width,
            "height": self.height,
            "sampler_name": self.sampler_name,
            "cfg_scale": self.cfg_scale,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "restore_faces": self.restore_faces,
            "face_restoration_model": self.face_restoration_model,
            "sd_model_name": self.sd_model_name,
            "sd_model_hash": self.sd_model_hash,
            "sd_vae_name": self.sd_vae_name,
            "sd_vae_hash": self.sd_vae_hash,
            "seed_resize_from_w": self.seed_resize_from_w,
            "seed_resize_from_h": self.seed_resize_from_h,
            "denoising_strength": self.denoising_strength,
            "extra_generation_params": self.extra_generation_params,
            "index_of_first_image": self.index_of_first_image,
            "infotexts": self.infotexts,
            "styles": self.styles,
            "job_timestamp": self.job_timestamp,
            "clip_skip": self.clip_skip,
            "is_using_inpainting_conditioning": self.is_using_inpainting_conditioning,
            "version": self.version,
        }
        return json.dumps(obj, default=lambda o: None)

    def infotext(self, p, index: int) -> str:
        return create_infotext(
            p,
            self.all_prompts,
            self.all_seeds,
            self.all_subseeds,
            comments=[],
            position_in_batch=index % self.batch_size,
            iteration=index // self.batch_size,
        )

    def get_token_merging_ratio(self, for_hr: bool = False) -> float:
        return self.token_merging_ratio_hr if for_hr else self.token_merging_ratio


def create_random_tensors(
    shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0, p=None
):
    return rng.ImageRNG(
        shape,
        seeds,
        subseeds=subseeds,
        subseed_strength=subseed_strength,
        seed_resize_from_h=seed_resize_from_h,
        seed_resize_from_w=seed_resize_from_w,
    ).next()


class DecodedSamples(list):
    already_decoded = True


def decode_latent_batch(model, batch, target_device=None, check_for_nans=False) -> DecodedSamples:
    """Decode sample by sample (identity for the pixel-space model); NaN check as the host's "unet" check."""
    samples = DecodedSamples()
    if check_for_nans:
        devices.test_for_nans(batch, "unet")
    for i in range(batch.shape[0]):
        sample = decode_first_stage(model, batch[i : i + 1])[0]
        if target_device is not None:
            sample = sample.to(target_device)
        samples.append(sample)
    return samples


def get_fixed_seed(seed: Any) -> int:
    if seed == "" or seed is None:
        seed = -1
    elif isinstance(seed, str):
        try:
            seed = int(seed)
        except Exception:
            seed = -1
    if seed == -1:
        return int(random.randrange(4294967294))
    return seed


def fix_seed(p) -> None:
    p.seed = get_fixed_seed(p.seed)
    p.subseed = get_fixed_seed(p.subseed)


def program_version() -> str:
    return "v1.10.1"


def create_infotext(
    p,
    all_prompts,
    all_seeds,
    all_subseeds,
    comments=None,
    iteration=0,
    position_in_batch=0,
    use_main_prompt=False,
    index=None,
    all_negative_prompts=None,
) -> str:
    """The infotext of one image: ``"{prompt}\\nNegative prompt: {neg}\\nKey: value, ..."``.

    ``p.extra_generation_params`` values are merged after the standard keys; a ``list`` value is indexed by the
    image's index in the whole job, a callable is called with this function's locals as keyword arguments
    (``p``, ``index``, ``prompt_text``, ``negative_prompt``, ...); ``None`` drops the key; values with ``,``,
    ``:`` or newlines are JSON-quoted; a key whose value equals the key is written alone.
    """
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size
    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts

    clip_skip = getattr(p, "clip_skip", opts.CLIP_stop_at_last_layers)
    enable_hr = getattr(p, "enable_hr", False)
    token_merging_ratio = p.get_token_merging_ratio()
    token_merging_ratio_hr = p.get_token_merging_ratio(for_hr=True)
    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]
    uses_ensd = opts.eta_noise_seed_delta != 0
    if uses_ensd:
        uses_ensd = sd_samplers_common.is_sampler_using_eta_noise_seed_delta(p)

    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "Schedule type": p.scheduler,
        "CFG scale": p.cfg_scale,
        "Image CFG scale": getattr(p, "image_cfg_scale", None),
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Face restoration": opts.face_restoration_model if p.restore_faces else None,
        "Size": f"{p.width}x{p.height}",
        "Model hash": p.sd_model_hash if opts.add_model_hash_to_info else None,
        "Model": p.sd_model_name if opts.add_model_name_to_info else None,
        "FP8 weight": opts.fp8_storage if devices.fp8 else None,
        "Cache FP16 weight for LoRA": opts.cache_fp16_weight if devices.fp8 else None,
        "VAE hash": p.sd_vae_hash if opts.add_vae_hash_to_info else None,
        "VAE": p.sd_vae_name if opts.add_vae_name_to_info else None,
        "Variation seed": None
        if p.subseed_strength == 0
        else (p.all_subseeds[0] if use_main_prompt else all_subseeds[index]),
        "Variation seed strength": None if p.subseed_strength == 0 else p.subseed_strength,
        "Seed resize from": None
        if p.seed_resize_from_w <= 0 or p.seed_resize_from_h <= 0
        else f"{p.seed_resize_from_w}x{p.seed_resize_from_h}",
        "Denoising strength": p.extra_generation_params.get("Denoising strength"),
        "Conditional mask weight": getattr(p, "inpainting_mask_weight", opts.inpainting_mask_weight)
        if p.is_using_inpainting_conditioning
        else None,
        "Clip skip": None if clip_skip <= 1 else clip_skip,
        "ENSD": opts.eta_noise_seed_delta if uses_ensd else None,
        "Token merging ratio": None if token_merging_ratio == 0 else token_merging_ratio,
        "Token merging ratio hr": None if not enable_hr or token_merging_ratio_hr == 0 else token_merging_ratio_hr,
        "Init image hash": getattr(p, "init_img_hash", None),
        "RNG": opts.randn_source if opts.randn_source != "GPU" else None,
        "Tiling": "True" if p.tiling else None,
        **p.extra_generation_params,
        "Version": program_version() if opts.add_version_to_infotext else None,
        "User": p.user if opts.add_user_name_to_info else None,
    }

    for key, value in generation_params.items():
        try:
            if isinstance(value, list):
                generation_params[key] = value[index]
            elif callable(value):
                generation_params[key] = value(**locals())  # as the host: the callable gets this frame's locals
        except Exception:
            errors.report(f'Error creating infotext for key "{key}"', exc_info=True)
            generation_params[key] = None

    text = ", ".join(
        k if k == v else f"{k}: {infotext_utils.quote(v)}" for k, v in generation_params.items() if v is not None
    )
    negative_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative_text}\n{text}".strip()


def process_images(p: StableDiffusionProcessing) -> Processed:
    """Run a generation with override settings applied and restored (mirrors the host function)."""
    if p.scripts is not None:
        p.scripts.before_process(p)

    stored_opts = {
        k: opts.data[k] if k in opts.data else opts.get_default(k) for k in p.override_settings if k in opts.data
    }
    try:
        if sd_models.checkpoint_aliases.get(p.override_settings.get("sd_model_checkpoint")) is None:
            p.override_settings.pop("sd_model_checkpoint", None)
            sd_models.reload_model_weights()
        for k, v in p.override_settings.items():
            opts.set(k, v, is_api=True, run_callbacks=False)
            if k == "sd_model_checkpoint":
                sd_models.reload_model_weights()
            if k == "sd_vae":
                sd_vae.reload_vae_weights()
        sd_models.apply_token_merging(p.sd_model, p.get_token_merging_ratio())
        sd_samplers.fix_p_invalid_sampler_and_scheduler(p)
        res = process_images_inner(p)
    finally:
        sd_models.apply_token_merging(p.sd_model, 0)
        if p.override_settings_restore_afterwards:
            for k, v in stored_opts.items():
                setattr(opts, k, v)
    return res


def _to_pil(x_sample: torch.Tensor) -> Image.Image:
    return Image.fromarray((255.0 * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8))


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    """The batch loop shared by txt2img and img2img (mirrors the host function)."""
    if isinstance(p.prompt, list):
        assert len(p.prompt) > 0
    else:
        assert p.prompt is not None

    seed = get_fixed_seed(p.seed)
    subseed = get_fixed_seed(p.subseed)
    if p.restore_faces is None:
        p.restore_faces = opts.face_restoration
    if p.tiling is None:
        p.tiling = opts.tiling
    if p.restore_faces or p.tiling:
        raise NotImplementedError("face restoration and tiling are not mirrored by the fake host")
    if p.refiner_checkpoint not in (None, "", "None", "none"):
        raise NotImplementedError("refiner checkpoints are not mirrored by the fake host")

    p.sd_model_name = shared.sd_model.sd_checkpoint_info.name_for_extra
    p.sd_model_hash = shared.sd_model.sd_model_hash
    p.sd_vae_name = sd_vae.get_loaded_vae_name()
    p.sd_vae_hash = sd_vae.get_loaded_vae_hash()
    model_hijack.apply_circular(p.tiling)
    model_hijack.clear_comments()

    p.fill_fields_from_opts()
    p.setup_prompts()

    if isinstance(seed, list):
        p.all_seeds = seed
    else:
        p.all_seeds = [int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]
    if isinstance(subseed, list):
        p.all_subseeds = subseed
    else:
        p.all_subseeds = [int(subseed) + x for x in range(len(p.all_prompts))]

    if os.path.exists(cmd_opts.embeddings_dir) and not p.do_not_reload_embeddings:
        model_hijack.embedding_db.load_textual_inversion_embeddings()

    if p.scripts is not None:
        p.scripts.process(p)

    infotexts: list[str] = []
    output_images: list = []
    with torch.no_grad(), p.sd_model.ema_scope():
        with devices.autocast():
            p.init(p.all_prompts, p.all_seeds, p.all_subseeds)

        if state.job_count == -1:
            state.job_count = p.n_iter

        for n in range(p.n_iter):
            p.iteration = n
            if state.skipped:
                state.skipped = False
            if state.interrupted or state.stopping_generation:
                break

            sd_models.reload_model_weights()
            p.prompts = p.all_prompts[n * p.batch_size : (n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size : (n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size : (n + 1) * p.batch_size]
            p.subseeds = p.all_subseeds[n * p.batch_size : (n + 1) * p.batch_size]

            latent_channels = getattr(shared.sd_model, "latent_channels", opt_C)
            p.rng = rng.ImageRNG(
                (latent_channels, p.height // opt_f, p.width // opt_f),
                p.seeds,
                subseeds=p.subseeds,
                subseed_strength=p.subseed_strength,
                seed_resize_from_h=p.seed_resize_from_h,
                seed_resize_from_w=p.seed_resize_from_w,
            )

            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            if len(p.prompts) == 0:
                break

            p.parse_extra_network_prompts()
            if not p.disable_extra_networks:
                with devices.autocast():
                    extra_networks.activate(p, p.extra_network_data)
            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)

            p.setup_conds()
            p.extra_generation_params.update(model_hijack.extra_generation_params)

            if n == 0 and not cmd_opts.no_prompt_history:
                with open(os.path.join(paths.data_path, "params.txt"), "w", encoding="utf8") as file:
                    file.write(Processed(p, []).infotext(p, 0))

            for comment in model_hijack.comments:
                p.comment(comment)
            if p.n_iter > 1:
                state.job = f"Batch {n + 1} out of {p.n_iter}"

            sd_models.apply_alpha_schedule_override(p.sd_model, p)
            samples_ddim = p.sample(
                conditioning=p.c,
                unconditional_conditioning=p.uc,
                seeds=p.seeds,
                subseeds=p.subseeds,
                subseed_strength=p.subseed_strength,
                prompts=p.prompts,
            )

            if p.scripts is not None:
                ps = scripts.PostSampleArgs(samples_ddim)
                p.scripts.post_sample(p, ps)
                samples_ddim = ps.samples

            if getattr(samples_ddim, "already_decoded", False):
                x_samples_ddim = samples_ddim
            else:
                devices.test_for_nans(samples_ddim, "unet")
                if opts.sd_vae_decode_method != "Full":
                    p.extra_generation_params["VAE Decoder"] = opts.sd_vae_decode_method
                x_samples_ddim = decode_latent_batch(
                    p.sd_model, samples_ddim, target_device=devices.cpu, check_for_nans=True
                )

            x_samples_ddim = torch.stack(x_samples_ddim).float()
            x_samples_ddim = torch.clamp((x_samples_ddim + 1.0) / 2.0, min=0.0, max=1.0)
            del samples_ddim
            state.nextjob()

            if p.scripts is not None:
                p.scripts.postprocess_batch(p, x_samples_ddim, batch_number=n)
                p.prompts = p.all_prompts[n * p.batch_size : (n + 1) * p.batch_size]
                p.negative_prompts = p.all_negative_prompts[n * p.batch_size : (n + 1) * p.batch_size]
                batch_params = scripts.PostprocessBatchListArgs(list(x_samples_ddim))
                p.scripts.postprocess_batch_list(p, batch_params, batch_number=n)
                x_samples_ddim = batch_params.images

            def infotext(index=0, use_main_prompt=False):
                return create_infotext(
                    p,
                    p.prompts,
                    p.seeds,
                    p.subseeds,
                    use_main_prompt=use_main_prompt,
                    index=index,
                    all_negative_prompts=p.negative_prompts,
                )

            save_samples = p.save_samples()
            for i, x_sample in enumerate(x_samples_ddim):
                p.batch_index = i
                image = _to_pil(x_sample)
                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image
                mask_for_overlay = getattr(p, "mask_for_overlay", None)
                overlay_image = None
                if (
                    opts.overlay_inpaint
                    and getattr(p, "overlay_images", None) is not None
                    and i < len(p.overlay_images)
                ):
                    overlay_image = p.overlay_images[i]
                if p.scripts is not None:
                    ppmo = scripts.PostProcessMaskOverlayArgs(i, mask_for_overlay, overlay_image)
                    p.scripts.postprocess_maskoverlay(p, ppmo)
                    mask_for_overlay, overlay_image = ppmo.mask_for_overlay, ppmo.overlay_image
                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image_after_composite(p, pp)
                    image = pp.image
                if save_samples:
                    images.save_image(
                        image,
                        p.outpath_samples,
                        "",
                        p.seeds[i],
                        p.prompts[i],
                        opts.samples_format,
                        info=infotext(i),
                        p=p,
                    )
                text = infotext(i)
                infotexts.append(text)
                if opts.enable_pnginfo:
                    image.info["parameters"] = text
                output_images.append(image)
            del x_samples_ddim

        if not infotexts:
            infotexts.append(Processed(p, []).infotext(p, 0))

        p.color_corrections = None
        index_of_first_image = 0
        unwanted_grid = len(output_images) < 2 and opts.grid_only_if_multiple
        if (opts.return_grid or opts.grid_save) and not p.do_not_save_grid and not unwanted_grid:
            grid = images.image_grid(output_images, p.batch_size)
            if opts.return_grid:
                text = infotext(use_main_prompt=True)
                infotexts.insert(0, text)
                if opts.enable_pnginfo:
                    grid.info["parameters"] = text
                output_images.insert(0, grid)
                index_of_first_image = 1
            if opts.grid_save:
                images.save_image(
                    grid,
                    p.outpath_grids,
                    "grid",
                    p.all_seeds[0],
                    p.all_prompts[0],
                    opts.grid_format,
                    info=infotext(use_main_prompt=True),
                    short_filename=not opts.grid_extended_filename,
                    p=p,
                    grid=True,
                )

    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)

    res = Processed(
        p,
        images_list=output_images,
        seed=p.all_seeds[0],
        info=infotexts[0],
        subseed=p.all_subseeds[0],
        index_of_first_image=index_of_first_image,
        infotexts=infotexts,
    )
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str = None
    hr_sampler_name: str = None
    hr_scheduler: str = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str = None

    cached_hr_uc = [None, None]
    cached_hr_c = [None, None]

    hr_checkpoint_info: dict = field(default=None, init=False)
    hr_upscale_to_x: int = field(default=0, init=False)
    hr_upscale_to_y: int = field(default=0, init=False)
    truncate_x: int = field(default=0, init=False)
    truncate_y: int = field(default=0, init=False)
    applied_old_hires_behavior_to: tuple = field(default=None, init=False)
    latent_scale_mode: dict = field(default=None, init=False)
    hr_c: tuple | None = field(default=None, init=False)
    hr_uc: tuple | None = field(default=None, init=False)
    all_hr_prompts: list = field(default=None, init=False)
    all_hr_negative_prompts: list = field(default=None, init=False)
    hr_prompts: list = field(default=None, init=False)
    hr_negative_prompts: list = field(default=None, init=False)
    hr_extra_network_data: list = field(default=None, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.firstphase_width != 0 or self.firstphase_height != 0:
            self.hr_upscale_to_x = self.width
            self.hr_upscale_to_y = self.height
            self.width = self.firstphase_width
            self.height = self.firstphase_height
        self.cached_hr_uc = StableDiffusionProcessingTxt2Img.cached_hr_uc
        self.cached_hr_c = StableDiffusionProcessingTxt2Img.cached_hr_c

    def calculate_target_resolution(self) -> None:
        if opts.use_old_hires_fix_width_height:
            raise NotImplementedError("use_old_hires_fix_width_height is not mirrored by the fake host")
        if self.hr_resize_x == 0 and self.hr_resize_y == 0:
            self.extra_generation_params["Hires upscale"] = self.hr_scale
            self.hr_upscale_to_x = int(self.width * self.hr_scale)
            self.hr_upscale_to_y = int(self.height * self.hr_scale)
            return
        self.extra_generation_params["Hires resize"] = f"{self.hr_resize_x}x{self.hr_resize_y}"
        if self.hr_resize_y == 0:
            self.hr_upscale_to_x = self.hr_resize_x
            self.hr_upscale_to_y = self.hr_resize_x * self.height // self.width
        elif self.hr_resize_x == 0:
            self.hr_upscale_to_x = self.hr_resize_y * self.width // self.height
            self.hr_upscale_to_y = self.hr_resize_y
        else:
            target_w, target_h = self.hr_resize_x, self.hr_resize_y
            if self.width / self.height < self.hr_resize_x / self.hr_resize_y:
                self.hr_upscale_to_x = self.hr_resize_x
                self.hr_upscale_to_y = self.hr_resize_x * self.height // self.width
            else:
                self.hr_upscale_to_x = self.hr_resize_y * self.width // self.height
                self.hr_upscale_to_y = self.hr_resize_y
            self.truncate_x = (self.hr_upscale_to_x - target_w) // opt_f
            self.truncate_y = (self.hr_upscale_to_y - target_h) // opt_f

    def init(self, all_prompts, all_seeds, all_subseeds) -> None:
        if not self.enable_hr:
            return
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        if self.hr_checkpoint_name and self.hr_checkpoint_name != "Use same checkpoint":
            raise NotImplementedError("a hires checkpoint is not mirrored by the fake host")
        if self.hr_sampler_name is not None and self.hr_sampler_name != self.sampler_name:
            self.extra_generation_params["Hires sampler"] = self.hr_sampler_name

        def get_hr_prompt(p, index, prompt_text, **kwargs):
            hr_prompt = p.all_hr_prompts[index]
            return hr_prompt if hr_prompt != prompt_text else None

        def get_hr_negative_prompt(p, index, negative_prompt, **kwargs):
            hr_negative_prompt = p.all_hr_negative_prompts[index]
            return hr_negative_prompt if hr_negative_prompt != negative_prompt else None

        self.extra_generation_params["Hires prompt"] = get_hr_prompt
        self.extra_generation_params["Hires negative prompt"] = get_hr_negative_prompt
        self.extra_generation_params["Hires schedule type"] = None
        if self.hr_scheduler is None:
            self.hr_scheduler = self.scheduler

        if self.hr_upscaler is not None:
            self.latent_scale_mode = shared.latent_upscale_modes.get(self.hr_upscaler, None)
        else:
            self.latent_scale_mode = shared.latent_upscale_modes.get(shared.latent_upscale_default_mode, "nearest")
        if self.latent_scale_mode is None and not any(x.name == self.hr_upscaler for x in shared.sd_upscalers):
            raise Exception(f"could not find upscaler named {self.hr_upscaler}")

        self.calculate_target_resolution()
        if not state.processing_has_refined_job_count:
            if state.job_count == -1:
                state.job_count = self.n_iter
            shared.total_tqdm.updateTotal((self.steps + (self.hr_second_pass_steps or self.steps)) * state.job_count)
            state.job_count = state.job_count * 2
            state.processing_has_refined_job_count = True
        if self.hr_second_pass_steps:
            self.extra_generation_params["Hires steps"] = self.hr_second_pass_steps
        if self.hr_upscaler is not None:
            self.extra_generation_params["Hires upscaler"] = self.hr_upscaler

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        """First pass with a fresh sampler; with ``enable_hr`` the samples go through :meth:`sample_hr_pass`."""
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        if self.firstpass_image is not None and self.enable_hr:
            raise NotImplementedError("firstpass_image (txt2img upscale) is not mirrored by the fake host")

        x = self.rng.next()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                p=self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning
            )
        samples = self.sampler.sample(
            self, x, conditioning, unconditional_conditioning, image_conditioning=self.txt2img_image_conditioning(x)
        )
        del x
        if not self.enable_hr:
            return samples
        decoded_samples = None  # latent upscalers only
        with sd_models.SkipWritingToConfig():
            sd_models.reload_model_weights(info=self.hr_checkpoint_info)
        return self.sample_hr_pass(samples, decoded_samples, seeds, subseeds, subseed_strength, prompts)

    def sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
        """Upscale the first-pass samples and denoise them again with a new sampler (``is_hr_pass`` True)."""
        if state.interrupted:
            return samples
        self.is_hr_pass = True
        target_width, target_height = self.hr_upscale_to_x, self.hr_upscale_to_y
        self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)

        if self.save_samples() and opts.save_images_before_highres_fix:
            for i in range(samples.shape[0]):
                image = sd_samplers_common.sample_to_image(samples, i, approximation=0)
                info = create_infotext(
                    self,
                    self.all_prompts,
                    self.all_seeds,
                    self.all_subseeds,
                    [],
                    iteration=self.iteration,
                    position_in_batch=i,
                )
                images.save_image(
                    image,
                    self.outpath_samples,
                    "",
                    seeds[i],
                    prompts[i],
                    opts.samples_format,
                    info=info,
                    p=self,
                    suffix="-before-highres-fix",
                )

        samples = torch.nn.functional.interpolate(
            samples,
            size=(target_height // opt_f, target_width // opt_f),
            mode=self.latent_scale_mode["mode"],
            antialias=self.latent_scale_mode["antialias"],
        )
        if getattr(self, "inpainting_mask_weight", opts.inpainting_mask_weight) < 1.0:
            image_conditioning = self.img2img_image_conditioning(decode_first_stage(self.sd_model, samples), samples)
        else:
            image_conditioning = self.txt2img_image_conditioning(samples)

        state.nextjob()
        samples = samples[
            :,
            :,
            self.truncate_y // 2 : samples.shape[2] - (self.truncate_y + 1) // 2,
            self.truncate_x // 2 : samples.shape[3] - (self.truncate_x + 1) // 2,
        ]
        self.rng = rng.ImageRNG(
            samples.shape[1:],
            self.seeds,
            subseeds=self.subseeds,
            subseed_strength=self.subseed_strength,
            seed_resize_from_h=self.seed_resize_from_h,
            seed_resize_from_w=self.seed_resize_from_w,
        )
        noise = self.rng.next()

        if not self.disable_extra_networks:
            extra_networks.activate(self, self.hr_extra_network_data)
        with devices.autocast():
            self.calculate_hr_conds()
        sd_models.apply_token_merging(self.sd_model, self.get_token_merging_ratio(for_hr=True))
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)

        samples = self.sampler.sample_img2img(
            self,
            samples,
            noise,
            self.hr_c,
            self.hr_uc,
            steps=self.hr_second_pass_steps or self.steps,
            image_conditioning=image_conditioning,
        )
        sd_models.apply_token_merging(self.sd_model, self.get_token_merging_ratio())
        self.sampler = None
        decoded_samples = decode_latent_batch(self.sd_model, samples, target_device=devices.cpu, check_for_nans=True)
        self.is_hr_pass = False
        return decoded_samples

    def close(self) -> None:
        super().close()
        self.hr_c = None
        self.hr_uc = None
        if not opts.persistent_cond_cache:
            StableDiffusionProcessingTxt2Img.cached_hr_uc = [None, None]
            StableDiffusionProcessingTxt2Img.cached_hr_c = [None, None]

    def setup_prompts(self) -> None:
        super().setup_prompts()
        if not self.enable_hr:
            return
        if self.hr_prompt == "":
            self.hr_prompt = self.prompt
        if self.hr_negative_prompt == "":
            self.hr_negative_prompt = self.negative_prompt
        self.all_hr_prompts = (
            self.hr_prompt if isinstance(self.hr_prompt, list) else self.batch_size * self.n_iter * [self.hr_prompt]
        )
        self.all_hr_negative_prompts = (
            self.hr_negative_prompt
            if isinstance(self.hr_negative_prompt, list)
            else self.batch_size * self.n_iter * [self.hr_negative_prompt]
        )
        self.all_hr_prompts = [shared.prompt_styles.apply_styles_to_prompt(x, self.styles) for x in self.all_hr_prompts]
        self.all_hr_negative_prompts = [
            shared.prompt_styles.apply_negative_styles_to_prompt(x, self.styles) for x in self.all_hr_negative_prompts
        ]

    def calculate_hr_conds(self) -> None:
        if self.hr_c is not None:
            return
        hr_prompts = prompt_parser.SdConditioning(
            self.hr_prompts, width=self.hr_upscale_to_x, height=self.hr_upscale_to_y
        )
        hr_negative_prompts = prompt_parser.SdConditioning(
            self.hr_negative_prompts, width=self.hr_upscale_to_x, height=self.hr_upscale_to_y, is_negative_prompt=True
        )
        sampler_config = sd_samplers.find_sampler_config(self.hr_sampler_name or self.sampler_name)
        steps = self.hr_second_pass_steps or self.steps
        total_steps = sampler_config.total_steps(steps) if sampler_config else steps
        self.hr_uc = self.get_conds_with_caching(
            prompt_parser.get_learned_conditioning,
            hr_negative_prompts,
            self.firstpass_steps,
            [self.cached_hr_uc, self.cached_uc],
            self.hr_extra_network_data,
            total_steps,
        )
        self.hr_c = self.get_conds_with_caching(
            prompt_parser.get_multicond_learned_conditioning,
            hr_prompts,
            self.firstpass_steps,
            [self.cached_hr_c, self.cached_c],
            self.hr_extra_network_data,
            total_steps,
        )

    def setup_conds(self) -> None:
        if self.is_hr_pass:
            self.hr_c = None
            self.calculate_hr_conds()
            return
        super().setup_conds()
        self.hr_uc = None
        self.hr_c = None
        if self.enable_hr and self.hr_checkpoint_info is None and opts.hires_fix_use_firstpass_conds:
            self.calculate_hr_conds()

    def get_conds(self):
        if self.is_hr_pass:
            return self.hr_c, self.hr_uc
        return super().get_conds()

    def parse_extra_network_prompts(self):
        res = super().parse_extra_network_prompts()
        if self.enable_hr:
            self.hr_prompts = self.all_hr_prompts[
                self.iteration * self.batch_size : (self.iteration + 1) * self.batch_size
            ]
            self.hr_negative_prompts = self.all_hr_negative_prompts[
                self.iteration * self.batch_size : (self.iteration + 1) * self.batch_size
            ]
            self.hr_prompts, self.hr_extra_network_data = extra_networks.parse_prompts(self.hr_prompts)
        return res


from modules.processing_img2img import StableDiffusionProcessingImg2Img  # noqa: E402, F401  (the host defines it here)
