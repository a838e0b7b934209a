"""Mirrors ``modules/sd_samplers_cfg_denoiser.py`` of A1111 1.10.1: ``CFGDenoiser`` and its helpers.

``CFGDenoiser.forward(x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond)`` follows the host step by
step (numbers refer to the list in ``shared/research/a1111.md`` section 2):

1. ``InterruptedException`` when ``state.interrupted`` or ``state.skipped``;
2. ``apply_refiner`` (no-op without a refiner);
3. ``is_edit_model`` (always False: the double has no InstructPix2Pix model);
4. ``conds_list, tensor = reconstruct_multicond_batch(cond, self.step)``; ``uncond = reconstruct_cond_batch(...)``;
5. mask blend before denoising for ``mask_before_denoising`` denoisers when a mask is set;
6-8. ``x_in``/``sigma_in``/``image_cond_in``: every image's row repeated once per AND part (image order, then part
   order), then the B uncond rows;
9. ``cfg_denoiser_callback(CFGDenoiserParams(x_in, image_cond_in, sigma_in, state.sampling_step,
   state.sampling_steps, tensor, uncond, self))`` and read ``x``, ``image_cond``, ``sigma``, ``text_cond``,
   ``text_uncond`` back;
10. uncond skipped (after the callback) by ``opts.skip_early_cond`` (``step / total_steps <= skip_early_cond``) or
    NGMS (odd step or ``s_min_uncond_all``, ``s_min_uncond > 0`` and ``sigma[0] < s_min_uncond``): the last B rows
    of ``x_in``/``sigma_in`` are dropped and the infotext keys "Skip Early CFG" / "NGMS" are set;
11. ``pad_cond_uncond_v0`` (repeat/truncate the last uncond vector) or ``pad_cond_uncond`` (pad with the empty
    prompt's chunk), only when token lengths differ;
12. UNet call(s): equal lengths (or uncond skipped) -> one call on ``cat([tensor, uncond])``, or slices of
    ``batch_size`` rows when ``opts.batch_cond_uncond`` is off; unequal lengths -> cond rows in slices of
    ``2 * batch_size`` (``batch_size`` without ``batch_cond_uncond``), then one separate call for the uncond rows;
    ``x_out`` always has ``x_in``'s layout;
13. skipped uncond -> ``x_out += [x_out[first cond row of image i] for i]`` (exact copies);
14. ``cfg_denoised_callback(CFGDenoisedParams(x_out, ...))`` (not read back);
15. ``last_noise_uncond`` when ``need_last_noise_uncond``;
16. ``combine_denoised`` (scale 1.0 when uncond was skipped);
17. mask blend after denoising (k-diffusion), ``sampler.last_latent`` = x0 of each image's first cond row, live
    preview latent stored;
18. ``cfg_after_cfg_callback(AfterCFGCallbackParams(denoised, ...))``, ``params.x`` read back;
19. ``self.step += 1``.
"""

from __future__ import annotations

from typing import Any

import torch
from modules import prompt_parser, sd_samplers_common, shared
from modules.script_callbacks import (
    AfterCFGCallbackParams,
    CFGDenoisedParams,
    CFGDenoiserParams,
    cfg_after_cfg_callback,
    cfg_denoised_callback,
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


def pad_cond(tensor: Any, repeats: int, empty: torch.Tensor) -> Any:
    """Append ``repeats`` copies of the empty prompt's chunk along the token axis."""
    if not isinstance(tensor, dict):
        return torch.cat([tensor, empty.repeat((tensor.shape[0], repeats, 1))], axis=1)
    tensor["crossattn"] = pad_cond(tensor["crossattn"], repeats, empty)
    return tensor


class CFGDenoiser(torch.nn.Module):
    """Classifier-free guidance around the model: one (batched) UNet evaluation for cond and uncond rows."""

    def __init__(self, sampler: Any):
        super().__init__()
        self.model_wrap: Any = None
        self.mask: torch.Tensor | None = None
        self.nmask: torch.Tensor | None = None
        self.init_latent: torch.Tensor | None = None
        self.steps: int | None = None
        """number of steps as specified by user in UI"""
        self.total_steps: int | None = None
        """expected number of calls to denoiser calculated from self.steps and specifics of the selected sampler"""
        self.step = 0
        self.image_cfg_scale: float | None = None
        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False
        self.sampler = sampler
        self.p: Any = None
        self.cond_scale_miltiplier = 1.0  # sic, host spelling
        self.need_last_noise_uncond = False
        self.last_noise_uncond: torch.Tensor | None = None
        self.mask_before_denoising = False

    @property
    def inner_model(self) -> Any:
        raise NotImplementedError()

    def combine_denoised(self, x_out: torch.Tensor, conds_list: list, uncond: Any, cond_scale: float) -> torch.Tensor:
        """``denoised[i] = u_i + sum_k w_k * cond_scale * (x_out[row_k] - u_i)`` with ``u = x_out[-B:]``."""
        denoised_uncond = x_out[-uncond.shape[0] :]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
        return denoised

    def combine_denoised_for_edit_model(self, x_out: torch.Tensor, cond_scale: float) -> torch.Tensor:
        out_cond, out_img_cond, out_uncond = x_out.chunk(3)
        return out_uncond + cond_scale * (out_cond - out_img_cond) + self.image_cfg_scale * (out_img_cond - out_uncond)

    def get_pred_x0(self, x_in: torch.Tensor, x_out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x_out

    def update_inner_model(self) -> None:
        self.model_wrap = None
        c, uc = self.p.get_conds()
        self.sampler.sampler_extra_args["cond"] = c
        self.sampler.sampler_extra_args["uncond"] = uc

    def pad_cond_uncond(self, cond: torch.Tensor, uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        empty = shared.sd_model.cond_stage_model_empty_prompt
        num_repeats = (cond.shape[1] - uncond.shape[1]) // empty.shape[1]
        if num_repeats < 0:
            cond = pad_cond(cond, -num_repeats, empty)
            self.padded_cond_uncond = True
        elif num_repeats > 0:
            uncond = pad_cond(uncond, num_repeats, empty)
            self.padded_cond_uncond = True
        return cond, uncond

    def pad_cond_uncond_v0(self, cond: torch.Tensor, uncond: Any) -> tuple[torch.Tensor, Any]:
        """Pre-1.6 DDIM padding: repeat uncond's last vector up to cond's length, or truncate it."""
        is_dict = isinstance(uncond, dict)
        vec = uncond["crossattn"] if is_dict else uncond
        if vec.shape[1] < cond.shape[1]:
            vec = torch.hstack([vec, vec[:, -1:].repeat([1, cond.shape[1] - vec.shape[1], 1])])
            self.padded_cond_uncond_v0 = True
        elif vec.shape[1] > cond.shape[1]:
            vec = vec[:, : cond.shape[1]]
            self.padded_cond_uncond_v0 = True
        if is_dict:
            uncond["crossattn"] = vec
        else:
            uncond = vec
        return cond, uncond

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        # 1. interruption
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException

        # 2. refiner switch (re-reads the conds from the sampler when it happens)
        if sd_samplers_common.apply_refiner(self, sigma):
            cond = self.sampler.sampler_extra_args["cond"]
            uncond = self.sampler.sampler_extra_args["uncond"]

        # 3. InstructPix2Pix models
        is_edit_model = (
            shared.sd_model.cond_stage_key == "edit"
            and self.image_cfg_scale is not None
            and self.image_cfg_scale != 1.0
        )

        # 4. the conds active at this denoiser call
        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)
        assert not is_edit_model or all(len(c) == 1 for c in conds_list), "AND is not supported for InstructPix2Pix"

        def apply_blend(current_latent: torch.Tensor) -> torch.Tensor:
            blended = current_latent * self.nmask + self.init_latent * self.mask
            if self.p.scripts is not None:
                from modules import scripts

                args = scripts.MaskBlendArgs(
                    current_latent, self.nmask, self.init_latent, self.mask, blended, denoiser=self, sigma=sigma
                )
                self.p.scripts.on_mask_blend(self.p, args)
                blended = args.blended_latent
            return blended

        # 5. mask blend before denoising (timesteps samplers)
        if self.mask_before_denoising and self.mask is not None:
            x = apply_blend(x)

        # 6. rows per image
        batch_size = len(conds_list)
        repeats = [len(conds_list[i]) for i in range(batch_size)]

        # 7. the cond dict handed to the model
        if shared.sd_model.model.conditioning_key == "crossattn-adm":
            image_uncond = torch.zeros_like(image_cond)

            def make_condition_dict(c_crossattn, c_adm):
                return {"c_crossattn": [c_crossattn], "c_adm": c_adm}
        else:
            image_uncond = image_cond
            if isinstance(uncond, dict):

                def make_condition_dict(c_crossattn, c_concat):
                    return {**c_crossattn, "c_concat": [c_concat]}
            else:

                def make_condition_dict(c_crossattn, c_concat):
                    return {"c_crossattn": [c_crossattn], "c_concat": [c_concat]}

        # 8. batch: cond rows (image order, then AND order), then one uncond row per image
        def per_cond_row(values: torch.Tensor) -> list[torch.Tensor]:
            return [torch.stack([values[i]] * n) for i, n in enumerate(repeats)]

        if not is_edit_model:
            x_in = torch.cat(per_cond_row(x) + [x])
            sigma_in = torch.cat(per_cond_row(sigma) + [sigma])
            image_cond_in = torch.cat(per_cond_row(image_cond) + [image_uncond])
        else:
            x_in = torch.cat(per_cond_row(x) + [x, x])
            sigma_in = torch.cat(per_cond_row(sigma) + [sigma, sigma])
            image_cond_in = torch.cat(per_cond_row(image_cond) + [image_uncond, torch.zeros_like(self.init_latent)])

        # 9. on_cfg_denoiser, then read the inputs back
        params = CFGDenoiserParams(
            x_in, image_cond_in, sigma_in, state.sampling_step, state.sampling_steps, tensor, uncond, self
        )
        cfg_denoiser_callback(params)
        x_in = params.x
        image_cond_in = params.image_cond
        sigma_in = params.sigma
        tensor = params.text_cond
        uncond = params.text_uncond

        # 10. skipping the uncond pass
        skip_uncond = False
        if opts.skip_early_cond != 0.0 and self.step / self.total_steps <= opts.skip_early_cond:
            skip_uncond = True
            self.p.extra_generation_params["Skip Early CFG"] = opts.skip_early_cond
        elif (
            (self.step % 2 or opts.s_min_uncond_all)
            and s_min_uncond > 0
            and sigma[0] < s_min_uncond
            and not is_edit_model
        ):
            skip_uncond = True
            self.p.extra_generation_params["NGMS"] = s_min_uncond
            if opts.s_min_uncond_all:
                self.p.extra_generation_params["NGMS all steps"] = opts.s_min_uncond_all
        if skip_uncond:
            x_in = x_in[:-batch_size]
            sigma_in = sigma_in[:-batch_size]

        # 11. padding cond/uncond to the same token length
        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False
        if opts.pad_cond_uncond_v0 and tensor.shape[1] != uncond.shape[1]:
            tensor, uncond = self.pad_cond_uncond_v0(tensor, uncond)
        elif opts.pad_cond_uncond and tensor.shape[1] != uncond.shape[1]:
            tensor, uncond = self.pad_cond_uncond(tensor, uncond)

        # 12. the UNet call(s)
        if tensor.shape[1] == uncond.shape[1] or skip_uncond:
            if is_edit_model:
                cond_in = catenate_conds([tensor, uncond, uncond])
            elif skip_uncond:
                cond_in = tensor
            else:
                cond_in = catenate_conds([tensor, uncond])
            if opts.batch_cond_uncond:
                x_out = self.inner_model(x_in, sigma_in, cond=make_condition_dict(cond_in, image_cond_in))
            else:
                x_out = torch.zeros_like(x_in)
                for a in range(0, x_out.shape[0], batch_size):
                    b = a + batch_size
                    x_out[a:b] = self.inner_model(
                        x_in[a:b],
                        sigma_in[a:b],
                        cond=make_condition_dict(subscript_cond(cond_in, a, b), image_cond_in[a:b]),
                    )
        else:
            x_out = torch.zeros_like(x_in)
            step = batch_size * 2 if opts.batch_cond_uncond else batch_size
            for a in range(0, tensor.shape[0], step):
                b = min(a + step, tensor.shape[0])
                c_crossattn = subscript_cond(tensor, a, b) if not is_edit_model else torch.cat([tensor[a:b]], uncond)
                x_out[a:b] = self.inner_model(
                    x_in[a:b], sigma_in[a:b], cond=make_condition_dict(c_crossattn, image_cond_in[a:b])
                )
            if not skip_uncond:
                n = uncond.shape[0]
                x_out[-n:] = self.inner_model(
                    x_in[-n:], sigma_in[-n:], cond=make_condition_dict(uncond, image_cond_in[-n:])
                )

        # 13. skipped uncond: each image's first cond row stands in for its uncond row
        first_rows = [rows[0][0] for rows in conds_list]
        if skip_uncond:
            x_out = torch.cat([x_out, torch.cat([x_out[i : i + 1] for i in first_rows])])

        # 14. on_cfg_denoised (not read back)
        cfg_denoised_callback(CFGDenoisedParams(x_out, state.sampling_step, state.sampling_steps, self.inner_model))

        # 15. DDIM CFG++ bookkeeping
        if self.need_last_noise_uncond:
            self.last_noise_uncond = torch.clone(x_out[-uncond.shape[0] :])

        # 16. guidance
        if is_edit_model:
            denoised = self.combine_denoised_for_edit_model(x_out, cond_scale * self.cond_scale_miltiplier)
        elif skip_uncond:
            denoised = self.combine_denoised(x_out, conds_list, uncond, 1.0)
        else:
            denoised = self.combine_denoised(x_out, conds_list, uncond, cond_scale * self.cond_scale_miltiplier)

        # 17. mask blend after denoising, last latent, preview
        if not self.mask_before_denoising and self.mask is not None:
            denoised = apply_blend(denoised)
        firsts_in = torch.cat([x_in[i : i + 1] for i in first_rows])
        self.sampler.last_latent = self.get_pred_x0(firsts_in, torch.cat([x_out[i : i + 1] for i in first_rows]), sigma)
        if opts.live_preview_content == "Prompt":
            preview = self.sampler.last_latent
        elif opts.live_preview_content == "Negative prompt":
            preview = self.get_pred_x0(x_in[-uncond.shape[0] :], x_out[-uncond.shape[0] :], sigma)
        else:
            preview = self.get_pred_x0(firsts_in, torch.cat([denoised[i : i + 1] for i in first_rows]), sigma)
        sd_samplers_common.store_latent(preview)

        # 18. on_cfg_after_cfg, read back
        after = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after)
        denoised = after.x

        # 19. one more denoiser call done
        self.step += 1
        return denoised
