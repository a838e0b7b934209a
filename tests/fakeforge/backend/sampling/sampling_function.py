"""Mirrors ``backend/sampling/sampling_function.py`` of Forge: ``sampling_function`` -> ``sampling_function_inner`` ->
``calc_cond_uncond_batch``.

* ``sampling_function(cfg_denoiser, denoiser_params, cond_scale, cond_composition)`` reads the UNet patcher from
  ``cfg_denoiser.inner_model.inner_model.forge_objects.unet`` on every call, compiles ``denoiser_params.text_cond`` /
  ``text_uncond`` (``condition.py``), adds ``image_cond`` as ``c_concat`` only when it has ``x``'s batch and spatial
  size, runs the patcher's ``conditioning_modifiers``, and returns ``(denoised, cond_pred, uncond_pred)``;
* ``sampling_function_inner``: the uncond is dropped when ``cond_scale == 1`` unless
  ``model_options["disable_cfg1_optimization"]``; ``sampler_pre_cfg_function``s; the two predictions; CFG (or
  ``sampler_cfg_function``; AND weights that do not sum to 1 multiply the scale); then every
  ``sampler_post_cfg_function(args)`` with ``args = {denoised, cond, uncond, model, uncond_denoised, cond_denoised,
  sigma, model_options, input}``, its return value taking over;
* ``calc_cond_uncond_batch``: all entries that concatenate go through ``model.apply_model`` in one call, in Forge's
  order (the entry list is walked backwards, so the uncond chunk comes first), with ``transformer_options`` =
  a copy of the patcher's plus ``cond_or_uncond`` (0 cond, 1 uncond per chunk), ``sigmas``, ``cond_mark``,
  ``cond_indices`` and ``uncond_indices``; ``model_function_wrapper`` is honoured. The outputs are x0 predictions,
  averaged per image over the AND parts with their weights (an absent uncond comes back as zeros).

Not mirrored: areas, masks, timestep ranges, ControlNet, the free-memory batch splitting (everything fits).
"""

from __future__ import annotations

import math

import torch
from backend.sampling.condition import Condition, compile_conditions, compile_weighted_conditions

COND, UNCOND = 0, 1


def _can_concat(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(a[k].can_concat(b[k]) for k in a)


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    out_cond = torch.zeros_like(x_in)
    out_count = torch.ones_like(x_in) * 1e-37
    out_uncond = torch.zeros_like(x_in)
    out_uncond_count = torch.ones_like(x_in) * 1e-37

    to_run = [(entry, COND) for entry in cond] + [(entry, UNCOND) for entry in (uncond or [])]
    while to_run:
        first = to_run[0][0]["model_conds"]
        batch = [i for i, (entry, _) in enumerate(to_run) if _can_concat(entry["model_conds"], first)]
        chunks = [to_run.pop(i) for i in reversed(batch)]
        cond_or_uncond = [role for _, role in chunks]
        n = len(chunks)
        conditioning = [
            {k: c.process_cond(batch_size=x_in.shape[0], device=x_in.device) for k, c in entry["model_conds"].items()}
            for entry, _ in chunks
        ]
        c = {k: conditioning[0][k].concat([other[k] for other in conditioning[1:]]) for k in conditioning[0]}

        options = dict(model_options.get("transformer_options", {}))
        per = int(timestep.shape[0])
        options["cond_or_uncond"] = cond_or_uncond[:]
        options["sigmas"] = timestep
        options["cond_mark"] = torch.tensor([m for m in cond_or_uncond for _ in range(per)]).to(timestep)
        options["cond_indices"] = [k * per + j for k, m in enumerate(cond_or_uncond) if m == COND for j in range(per)]
        options["uncond_indices"] = [k * per + j for k, m in enumerate(cond_or_uncond) if m != COND for j in range(per)]
        c["transformer_options"] = options

        input_x = torch.cat([x_in] * n)
        timestep_ = torch.cat([timestep] * n)
        if "model_function_wrapper" in model_options:
            args = {"input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond}
            output = model_options["model_function_wrapper"](model.apply_model, args).chunk(n)
        else:
            output = model.apply_model(input_x, timestep_, **c).chunk(n)

        for (entry, role), out in zip(chunks, output):
            mult = torch.ones_like(x_in) * entry.get("strength", 1.0)
            if role == COND:
                out_cond += out * mult
                out_count += mult
            else:
                out_uncond += out * mult
                out_uncond_count += mult

    return out_cond / out_count, out_uncond / out_uncond_count


def sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options, seed=None, return_full=False):
    edit_strength = sum(item.get("strength", 1) for item in cond)
    if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False):
        uncond_ = None
    else:
        uncond_ = uncond

    for fn in model_options.get("sampler_pre_cfg_function", []):
        model, cond, uncond_, x, timestep, model_options = fn(model, cond, uncond_, x, timestep, model_options)

    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options)

    if "sampler_cfg_function" in model_options:
        args = {
            "cond": x - cond_pred,
            "uncond": x - uncond_pred,
            "cond_scale": cond_scale,
            "timestep": timestep,
            "input": x,
            "sigma": timestep,
            "cond_denoised": cond_pred,
            "uncond_denoised": uncond_pred,
            "model": model,
            "model_options": model_options,
        }
        cfg_result = x - model_options["sampler_cfg_function"](args)
    elif not math.isclose(edit_strength, 1.0):
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale * edit_strength
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale

    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {
            "denoised": cfg_result,
            "cond": cond,
            "uncond": uncond,
            "model": model,
            "uncond_denoised": uncond_pred,
            "cond_denoised": cond_pred,
            "sigma": timestep,
            "model_options": model_options,
            "input": x,
        }
        cfg_result = fn(args)

    if return_full:
        return cfg_result, cond_pred, uncond_pred
    return cfg_result


def sampling_function(self, denoiser_params, cond_scale, cond_composition):
    unet_patcher = self.inner_model.inner_model.forge_objects.unet
    model = unet_patcher.model
    x = denoiser_params.x
    timestep = denoiser_params.sigma
    uncond = compile_conditions(denoiser_params.text_uncond)
    cond = compile_weighted_conditions(denoiser_params.text_cond, cond_composition)
    model_options = unet_patcher.model_options
    seed = self.p.seeds[0]

    image_cond = unet_patcher.extra_concat_condition
    if image_cond is None:
        image_cond = denoiser_params.image_cond
    same_size = isinstance(image_cond, torch.Tensor) and image_cond.shape[0] == x.shape[0]
    if same_size and image_cond.shape[2:] == x.shape[2:]:
        for entry in cond + (uncond or []):
            entry["model_conds"]["c_concat"] = Condition(image_cond)

    for modifier in model_options.get("conditioning_modifiers", []):
        model, x, timestep, uncond, cond, cond_scale, model_options, seed = modifier(
            model, x, timestep, uncond, cond, cond_scale, model_options, seed
        )

    return sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options, seed, return_full=True)
