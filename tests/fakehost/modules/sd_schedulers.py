"""Mirrors ``modules/sd_schedulers.py`` of A1111 1.10.1: the ``Scheduler`` records and ``schedulers_map``.

Implemented: Automatic (the sampler's default: for Euler/Euler a the model's own ``get_sigmas``), Uniform, Karras
and Exponential. The host's other schedule types are listed so that names resolve as in the host, but selecting one
raises NotImplementedError.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import k_diffusion


@dataclasses.dataclass
class Scheduler:
    name: str
    label: str
    function: Any
    default_rho: float = -1
    need_inner_model: bool = False
    aliases: list | None = None


def uniform(n, sigma_min, sigma_max, inner_model, device):
    return inner_model.get_sigmas(n).to(device)


def _not_mirrored(label: str):
    def function(*args, **kwargs):
        raise NotImplementedError(f"schedule type {label!r} is not mirrored by the fake host")

    return function


schedulers = [
    Scheduler("automatic", "Automatic", None),
    Scheduler("uniform", "Uniform", uniform, need_inner_model=True),
    Scheduler("karras", "Karras", k_diffusion.sampling.get_sigmas_karras, default_rho=7.0),
    Scheduler("exponential", "Exponential", k_diffusion.sampling.get_sigmas_exponential),
    Scheduler("polyexponential", "Polyexponential", _not_mirrored("Polyexponential"), default_rho=1.0),
    Scheduler(
        "sgm_uniform", "SGM Uniform", _not_mirrored("SGM Uniform"), need_inner_model=True, aliases=["SGMUniform"]
    ),
    Scheduler("kl_optimal", "KL Optimal", _not_mirrored("KL Optimal")),
    Scheduler("align_your_steps", "Align Your Steps", _not_mirrored("Align Your Steps")),
    Scheduler("simple", "Simple", _not_mirrored("Simple"), need_inner_model=True),
    Scheduler("normal", "Normal", _not_mirrored("Normal"), need_inner_model=True),
    Scheduler("ddim", "DDIM", _not_mirrored("DDIM"), need_inner_model=True),
    Scheduler("beta", "Beta", _not_mirrored("Beta"), need_inner_model=True),
]

schedulers_map = {**{x.name: x for x in schedulers}, **{x.label: x for x in schedulers}}
