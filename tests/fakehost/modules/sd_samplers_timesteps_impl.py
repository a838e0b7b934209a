"""Mirrors ``modules/sd_samplers_timesteps_impl.py`` of A1111 1.10.1: the DDIM loop (``ddim``).

DDIM (Song et al. 2021) over the given integer ``timesteps``: ``len(timesteps) - 1`` model calls, from the
largest timestep down to ``timesteps[1]``; each call returns eps (``CFGDenoiserTimesteps``) at the DDPM latent
``x``; ``a_prev`` uses the previous timestep in the list (the last update lands on ``timesteps[0]``, not 0); noise
``sigma_t * randn_like(x)`` is drawn every step (zero for the default eta 0). The callback runs after the update.
PLMS, UniPC and DDIM CFG++ are not mirrored.
"""

from __future__ import annotations

import k_diffusion.sampling
import numpy as np
import torch


@torch.no_grad()
def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    alphas_cumprod = model.inner_model.inner_model.alphas_cumprod
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    a_np, a_prev_np = alphas.cpu().double().numpy(), alphas_prev.cpu().numpy()
    sigmas = eta * np.sqrt((1 - a_prev_np) / (1 - a_np) * (1 - a_np / a_prev_np))

    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones((x.shape[0],))
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sigma_t = sigmas[index].item() * s_x
        sqrt_one_minus_at = sqrt_one_minus_alphas[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * e_t
        noise = sigma_t * k_diffusion.sampling.torch.randn_like(x)
        x = a_prev.sqrt() * pred_x0 + dir_xt + noise
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x
