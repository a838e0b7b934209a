"""Mirrors ``modules/sd_samplers.py`` of A1111 1.10.1: the sampler registry (``all_samplers``, ``samplers_map``,
``find_sampler_config``, ``create_sampler``, ``get_sampler_and_scheduler``, ``fix_p_invalid_sampler_and_scheduler``).

Registered: "DPM++ 2M" (the host's first, hence default, sampler), "Euler a", "Euler", "DDIM". A host sampler the
double does not implement raises NotImplementedError in ``create_sampler`` and ``fix_p_invalid_sampler_and_scheduler``
(the host would run it; silently substituting the default would hide a bug). Unknown names fall back to the
default with a warning, as in the host.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from modules import sd_samplers_common, sd_samplers_kdiffusion, sd_samplers_timesteps, sd_schedulers, shared

all_samplers = [*sd_samplers_kdiffusion.samplers_data_k_diffusion, *sd_samplers_timesteps.samplers_data_timesteps]
all_samplers_map = {x.name: x for x in all_samplers}
not_mirrored = set(
    sd_samplers_kdiffusion.samplers_k_diffusion_not_mirrored
    + sd_samplers_timesteps.samplers_timesteps_not_mirrored
    + ["LCM"]
)

samplers: list[sd_samplers_common.SamplerData] = []
samplers_for_img2img: list[sd_samplers_common.SamplerData] = []
samplers_map: dict[str, str] = {}
samplers_hidden: set[str] = set()


def _refuse(name: str | None) -> None:
    if name in not_mirrored:
        raise NotImplementedError(f"sampler {name!r} exists in A1111 1.10.1 but is not mirrored by the fake host")


def find_sampler_config(name: str | None) -> sd_samplers_common.SamplerData | None:
    return all_samplers_map.get(name) if name is not None else all_samplers[0]


def create_sampler(name: str | None, model: Any) -> Any:
    _refuse(name)
    config = find_sampler_config(name)
    assert config is not None, f"bad sampler name: {name}"
    if model.is_sdxl and config.options.get("no_sdxl", False):
        raise Exception(f"Sampler {config.name} is not supported for SDXL")
    sampler = config.constructor(model)
    sampler.config = config
    return sampler


def set_samplers() -> None:
    global samplers, samplers_for_img2img, samplers_hidden
    samplers_hidden = set(shared.opts.hide_samplers)
    samplers = all_samplers
    samplers_for_img2img = all_samplers
    samplers_map.clear()
    for sampler in all_samplers:
        samplers_map[sampler.name.lower()] = sampler.name
        for alias in sampler.aliases:
            samplers_map[alias.lower()] = sampler.name


def visible_sampler_names() -> list[str]:
    return [x.name for x in samplers if x.name not in samplers_hidden]


@functools.cache
def get_sampler_and_scheduler(sampler_name, scheduler_name, *, convert_automatic=True):
    """Split "Euler a Karras"-style names, default the sampler, and map a sampler's default schedule to Automatic."""
    default_sampler = samplers[0]
    found_scheduler = sd_schedulers.schedulers_map.get(scheduler_name, sd_schedulers.schedulers[0])
    name = sampler_name or default_sampler.name
    for scheduler in sd_schedulers.schedulers:
        for option in [scheduler.label, scheduler.name, *(scheduler.aliases or [])]:
            if name.endswith(" " + option):
                found_scheduler = scheduler
                name = name[: -(len(option) + 1)]
                break
    _refuse(name)
    sampler = all_samplers_map.get(name, default_sampler)
    if convert_automatic and sampler.options.get("scheduler", None) == found_scheduler.name:
        found_scheduler = sd_schedulers.schedulers[0]
    return sampler.name, found_scheduler.label


def fix_p_invalid_sampler_and_scheduler(p: Any) -> None:
    before = p.sampler_name, p.scheduler
    p.sampler_name, p.scheduler = get_sampler_and_scheduler(p.sampler_name, p.scheduler, convert_automatic=False)
    if (p.sampler_name, p.scheduler) != before:
        logging.warning(
            f'Sampler Scheduler autocorrection: "{before[0]}" -> "{p.sampler_name}", "{before[1]}" -> "{p.scheduler}"'
        )


set_samplers()
