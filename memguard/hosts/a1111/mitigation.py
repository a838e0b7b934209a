"""A mitigation in force on A1111: the flagged images' new conditioning rows substituted at every denoiser call,
the attention edit hooked on the UNet for the rest of the batch, the guidance schedule applied after CFG."""

from __future__ import annotations

from typing import Any

import torch

from ...mitigate.attention import cross_attention_modules, rescaled_attention
from ...mitigate.base import Case, Intervention
from . import host
from .conditioning import crossattn, with_rows
from .process import PROCESS
from .run import Run


def install(run: Run, rows: list[int], case: Case, intervention: Intervention) -> None:
    """Make the intervention take effect from this call on: new cond rows, attention hooks, guidance schedules."""
    step0 = run.at_step0()
    context = crossattn(step0.text_cond)
    for j, r in enumerate(rows):
        run.original_rows[r] = context[r]
        run.mitigated_rows[r] = intervention.cond[j].to(context.dtype)
        if intervention.pooled is not None:
            run.mitigated_pooled[r] = intervention.pooled[j]
    lay = step0.layout
    if intervention.attention is not None:
        PROCESS.hook_stack().enter_context(
            rescaled_attention(
                cross_attention_modules(host.unet()),
                rows,
                case.keep,
                intervention.attention,
                batch=lay.n_cond + lay.batch,
                bos=case.bos,
            )
        )
    if intervention.guidance:
        owner = lay.image_of_rows()
        for j, r in enumerate(rows):
            run.guidance.setdefault(owner[r], intervention.guidance[j])


def substitute(run: Run, params: Any) -> None:
    """Replace the mitigated rows of ``text_cond`` (their context, and on SDXL their pooled text vector) in new
    tensors, while the host still schedules the step-0 cond."""
    context = crossattn(params.text_cond)
    rows = [
        r
        for r, original in run.original_rows.items()
        if r < context.shape[0] and context[r].shape == original.shape and torch.equal(context[r], original)
    ]
    if rows:
        params.text_cond = with_rows(
            params.text_cond,
            {r: run.mitigated_rows[r] for r in rows},
            {r: run.mitigated_pooled[r] for r in rows if r in run.mitigated_pooled},
        )


def apply_guidance(run: Run, denoiser: Any, params: Any) -> None:
    """Per-image guidance scale (Jain et al.): recombine the image's CFG pair with its own scale."""
    step0, x_out, sigmas = run.at_step0(), run.x_out, run.sigma
    lay = step0.layout
    if x_out is None or sigmas is None or x_out.shape[0] != lay.n_cond + lay.batch:
        return
    denoised = params.x.clone()
    scale = float(getattr(denoiser.p, "cfg_scale", 7.5))
    total = max(getattr(denoiser, "total_steps", 1), 1)
    sigma = float(sigmas[0])
    t = sigma if step0.timesteps else float(denoiser.inner_model.sigma_to_t(sigmas[:1])[0])
    to_eps = 1.0 if step0.timesteps else 1.0 / sigma  # ||eps_c - eps_u|| = ||x0_c - x0_u|| / sigma
    for i, schedule in run.guidance.items():
        u = x_out[lay.n_cond + i]
        d_t = max(float((x_out[r] - u).float().norm()) for r, _ in lay.cond_rows[i]) * to_eps
        s = schedule.scale(denoiser.step, total, t, d_t, scale)
        denoised[i] = u + sum(w * s * (x_out[r] - u) for r, w in lay.cond_rows[i])
    params.x = denoised
