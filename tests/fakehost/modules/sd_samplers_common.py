"""Mirrors ``modules/sd_samplers_common.py`` of A1111 1.10.1.

* ``SamplerData`` (``total_steps`` doubles for ``second_order`` samplers), ``setup_img2img_steps``;
* ``InterruptedException`` is a ``BaseException``: raised by ``CFGDenoiser.forward`` on interrupt/skip and by
  ``callback_state`` past ``stop_at``; ``launch_sampling`` catches it and returns ``last_latent``;
* ``TorchHijack``: replaces ``k_diffusion.sampling.torch`` so ``torch.randn_like`` draws ``p.rng.next()``;
* ``Sampler``: ``initialize(p)`` (resets ``model_wrap_cfg.step``, sets ``p``/``mask``/``eta``/``s_min_uncond`` and
  the extra keyword arguments from ``p.s_churn`` ... like the host), ``callback_state`` (writes
  ``state.sampling_step = i`` after each step's model call, hence the one-call lag), ``launch_sampling`` (sets
  ``model_wrap_cfg.steps``/``total_steps``, ``state.sampling_steps``), ``add_infotext`` ("Pad conds");
* ``apply_refiner``: without a refiner checkpoint it does nothing, as in the host; refiners are not mirrored;
* ``store_latent`` keeps ``state.current_latent``; decoding helpers are the identity (pixel-space model).
"""

from __future__ import annotations

import inspect
from collections import namedtuple
from typing import Any

import k_diffusion.sampling
import numpy as np
import torch
from modules import shared
from modules.shared import opts, state

SamplerDataTuple = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps: int) -> int:
        return steps * 2 if self.options.get("second_order", False) else steps


def setup_img2img_steps(p: Any, steps: int | None = None) -> tuple[int, int]:
    """``(steps, t_enc)`` for img2img / the hires pass (mirrors the host function)."""
    if opts.img2img_fix_steps or steps is not None:
        requested = steps or p.steps
        steps = int(requested / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


approximation_indexes = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}


def samples_to_images_tensor(sample: torch.Tensor, approximation: int | None = None, model: Any = None) -> torch.Tensor:
    """Pixel-space model: every decoding method is the identity."""
    model = model or shared.sd_model
    return model.decode_first_stage(sample)


def decode_first_stage(model: Any, x: torch.Tensor) -> torch.Tensor:
    return samples_to_images_tensor(x, approximation_indexes.get(opts.sd_vae_decode_method, 0), model)


def single_sample_to_image(sample: torch.Tensor, approximation: int | None = None):
    from PIL import Image

    x = torch.clamp(samples_to_images_tensor(sample.unsqueeze(0), approximation)[0] * 0.5 + 0.5, 0.0, 1.0)
    return Image.fromarray((255.0 * np.moveaxis(x.cpu().numpy(), 0, 2)).astype(np.uint8))


def sample_to_image(samples: torch.Tensor, index: int = 0, approximation: int | None = None):
    return single_sample_to_image(samples[index], approximation)


def images_tensor_to_samples(image: torch.Tensor, approximation: int | None = None, model: Any = None) -> torch.Tensor:
    """image in [0, 1] -> sample (pixel space: ``2 * image - 1``)."""
    return image * 2 - 1


def store_latent(decoded: torch.Tensor) -> None:
    state.current_latent = decoded


def is_sampler_using_eta_noise_seed_delta(p: Any) -> bool:
    from modules import sd_samplers

    config = sd_samplers.find_sampler_config(p.sampler_name)
    eta = p.eta
    if eta is None and p.sampler is not None:
        eta = p.sampler.eta
    if eta is None and config is not None:
        eta = 0 if config.options.get("default_eta_is_0", False) else 1.0
    if eta == 0:
        return False
    return config.options.get("uses_ensd", False)


class InterruptedException(BaseException):
    """Ends sampling early; a BaseException so ``except Exception`` in callbacks does not swallow it."""


def apply_refiner(cfg_denoiser: Any, sigma: torch.Tensor | None = None) -> bool:
    """Refiner switching is not mirrored: without ``p.refiner_checkpoint_info`` the host returns False too."""
    if cfg_denoiser.p.refiner_checkpoint_info is None:
        return False
    raise NotImplementedError("refiner checkpoints are not mirrored by the fake host")


class TorchHijack:
    """Stands in for the ``torch`` module inside ``k_diffusion.sampling``: ``randn_like`` -> ``p.rng.next()``."""

    def __init__(self, p: Any):
        self.rng = p.rng

    def __getattr__(self, item: str) -> Any:
        if item == "randn_like":
            return self.randn_like
        if hasattr(torch, item):
            return getattr(torch, item)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{item}'")

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.rng.next()


class Sampler:
    """Base of ``KDiffusionSampler`` and ``CompVisSampler``."""

    def __init__(self, funcname: Any):
        self.funcname = funcname
        self.func = funcname
        self.extra_params: list[str] = []
        self.sampler_noises = None
        self.stop_at: int | None = None
        self.eta: float | None = None
        self.config: SamplerData | None = None
        self.last_latent: torch.Tensor | None = None
        self.s_min_uncond: float | None = None
        self.s_churn = 0.0
        self.s_tmin = 0.0
        self.s_tmax = float("inf")
        self.s_noise = 1.0
        self.eta_option_field = "eta_ancestral"
        self.eta_infotext_field = "Eta"
        self.eta_default = 1.0
        self.conditioning_key = getattr(shared.sd_model.model, "conditioning_key", "crossattn")
        self.p: Any = None
        self.model_wrap_cfg: Any = None
        self.sampler_extra_args: dict | None = None
        self.options: dict = {}

    def callback_state(self, d: dict) -> None:
        """Called by the sampling loop after step ``d['i']``'s model call."""
        step = d["i"]
        if self.stop_at is not None and step > self.stop_at:
            raise InterruptedException
        state.sampling_step = step
        shared.total_tqdm.update()

    def launch_sampling(self, steps: int, func: Any) -> torch.Tensor:
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0
        try:
            return func()
        except RecursionError:
            return self.last_latent
        except InterruptedException:
            return self.last_latent

    def number_of_needed_noises(self, p: Any) -> int:
        return p.steps

    def initialize(self, p: Any) -> dict:
        """Bind ``p`` to the denoiser, reset its step counter, and collect the sampler's keyword arguments."""
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = p.mask if hasattr(p, "mask") else None
        self.model_wrap_cfg.nmask = p.nmask if hasattr(p, "nmask") else None
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.eta = p.eta if p.eta is not None else getattr(opts, self.eta_option_field, 0.0)
        self.s_min_uncond = getattr(p, "s_min_uncond", 0.0)

        k_diffusion.sampling.torch = TorchHijack(p)

        parameters = inspect.signature(self.func).parameters
        kwargs: dict = {}
        for name in self.extra_params:
            if hasattr(p, name) and name in parameters:
                kwargs[name] = getattr(p, name)
        if "eta" in parameters:
            if self.eta != self.eta_default:
                p.extra_generation_params[self.eta_infotext_field] = self.eta
            kwargs["eta"] = self.eta
        if self.extra_params:
            overrides = {
                "s_churn": (getattr(opts, "s_churn", p.s_churn), self.s_churn, "Sigma churn"),
                "s_tmin": (getattr(opts, "s_tmin", p.s_tmin), self.s_tmin, "Sigma tmin"),
                "s_tmax": (getattr(opts, "s_tmax", p.s_tmax) or self.s_tmax, self.s_tmax, "Sigma tmax"),
                "s_noise": (getattr(opts, "s_noise", p.s_noise), self.s_noise, "Sigma noise"),
            }
            for name, (value, default, label) in overrides.items():
                if name in kwargs and value != default:
                    kwargs[name] = value
                    setattr(p, name, value)
                    p.extra_generation_params[label] = value
        return kwargs

    def create_noise_sampler(self, x: torch.Tensor, sigmas: torch.Tensor, p: Any) -> Any:
        raise NotImplementedError("Brownian-tree noise (SDE samplers) is not mirrored by the fake host")

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        raise NotImplementedError()

    def sample_img2img(
        self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None
    ):
        raise NotImplementedError()

    def add_infotext(self, p: Any) -> None:
        if self.model_wrap_cfg.padded_cond_uncond:
            p.extra_generation_params["Pad conds"] = True
        if self.model_wrap_cfg.padded_cond_uncond_v0:
            p.extra_generation_params["Pad conds v0"] = True
