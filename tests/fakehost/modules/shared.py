"""Mirrors ``modules/shared.py`` of A1111 1.10.1: the process-wide globals an extension reads.

``opts`` (settings), ``state`` (generation state), ``cmd_opts`` (command line), ``sd_model`` (the loaded model,
set by ``sd_models.load_model``), ``prompt_styles``, ``total_tqdm`` and the latent upscale modes. The host fills
these in ``shared_init.initialize``; the double fills them at import time.
"""

from __future__ import annotations

import sys
from typing import Any

from modules import devices, options, shared_cmd_options, shared_options, shared_state, shared_total_tqdm, styles

cmd_opts = shared_cmd_options.cmd_opts
parser = shared_cmd_options.parser

batch_cond_uncond = True  # old field, unused (the host reads opts.batch_cond_uncond)
parallel_processing_allowed = True
demo: Any = None
device = devices.device
hypernetworks: dict = {}
loaded_hypernetworks: list = []
face_restorers: list = []
settings_components: dict | None = None
tab_names: list[str] = []
sd_upscalers: list = []
progress_print_out = sys.stdout

options_templates = shared_options.options_templates
restricted_opts: set[str] = {"outdir_samples", "outdir_txt2img_samples", "outdir_grids", "outdir_txt2img_grids"}
opts = options.Options(options_templates, restricted_opts)
state = shared_state.State()
prompt_styles = styles.StyleDatabase()
total_tqdm = shared_total_tqdm.TotalTQDM()

sd_model: Any = None
"""The loaded model (``sd_models.load_model``), a ``LatentDiffusion``-like wrapper; None before loading."""

latent_upscale_default_mode = "Latent"
latent_upscale_modes = {
    "Latent": {"mode": "bilinear", "antialias": False},
    "Latent (antialiased)": {"mode": "bilinear", "antialias": True},
    "Latent (bicubic)": {"mode": "bicubic", "antialias": False},
    "Latent (bicubic antialiased)": {"mode": "bicubic", "antialias": True},
    "Latent (nearest)": {"mode": "nearest", "antialias": False},
    "Latent (nearest-exact)": {"mode": "nearest-exact", "antialias": False},
}

OptionInfo = options.OptionInfo
OptionHTML = options.OptionHTML
options_section = options.options_section
