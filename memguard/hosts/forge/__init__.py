"""The Stable Diffusion WebUI Forge seam (``lllyasviel/stable-diffusion-webui-forge``, Forge 2 on WebUI 1.10).

Reading (Forge's source; behaviour mirrored, no code taken):

* ``modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward`` passes the *unbatched* ``x`` (one row per image) to
  ``on_cfg_denoiser`` (read back), never fires ``on_cfg_denoised``, and hands over to
  ``backend/sampling/sampling_function.py: sampling_function``, which reads ``forge_objects.unet`` on every call;
* ``sampling_function_inner`` gets the cond and uncond **x0 predictions** from ``calc_cond_uncond_batch`` (the AND
  parts of an image averaged by weight; the uncond left out, as zeros, when the scale is 1), combines them, then
  calls each ``model_options["sampler_post_cfg_function"]`` with ``{denoised, cond_denoised, uncond_denoised, sigma,
  input, model, ...}`` and samples on with what it returns. With ``x = x0 + sigma * eps``,
  ``eps_c - eps_u = (uncond_denoised - cond_denoised) / sigma``;
* ``modules/processing.py: process_images_inner`` resets ``sd_model.forge_objects`` before every sampling pass and
  then calls AlwaysVisible scripts' ``process_before_every_sampling``: patches go on a ``clone()`` of
  ``forge_objects.unet`` put back there (the pattern of ``extensions-builtin/sd_forge_sag``) and vanish with the pass;
* sampling runs under ``torch.inference_mode()``; ``sd_model.cond_stage_model`` is None (prompts are chunked by
  ``text_processing_engine``, the same ``process_texts`` API).

What memguard does (only while an ``a1111.Run`` is attached to the processing object, as on A1111):

* watch: the companion's ``process_before_every_sampling`` (:func:`install`) adds a post-CFG function to a clone of
  the pass's UNet patcher. At the first step of the first pass it scores every image from the host's own two
  predictions and returns ``denoised`` untouched. Extra UNet work only where the host's uncond is not the empty
  prompt: one batch of empty-prompt rows when the negative prompt is set or the host skipped its uncond (scale 1 at
  the first step: skip-early CFG, NGMS, CFG 1), one batch of cond rows when a prompt has AND parts (Forge averaged
  them). ``disable_cfg1_optimization`` is left alone: forcing the uncond would cost a pass at every scale-1 step and
  change the watched images.
* mitigate: at the same point the flagged images get the strategy's intervention, their first-step prediction is
  recomputed with it in force (one extra batch of their cond rows; none for a guidance schedule alone) and swapped
  into ``denoised``; later steps:
  - attention (Ren et al.): ``attn2`` *replace* patches on the clone edit the cond rows of the flagged images, found
    from ``extra_options["cond_or_uncond"]``: on the projected keys, BOS times ``C`` and the padding keys dropped,
    exactly; every other row is the host's attention (or the replace patch that was there). An ``attn2_patch`` could
    scale BOS (``to_k`` has no bias) but not drop keys for some rows of the call only, hence the replace patch;
  - guidance schedule (Jain et al.): the post-CFG function moves each flagged image to ``u + s_i (c - u)``, with the
    host's own scale (read off ``denoised``) wherever the schedule has handed over;
  - embedding (Wen et al.) needs gradients: tried with ``torch.inference_mode(False)`` and ``enable_grad`` on cloned
    inputs; when Forge's weights are inference tensors it raises, and the attention edit (``auto``: attention and
    guidance) is used instead, with a note saying embedding optimization is unavailable on Forge. Optimized rows
    are substituted into ``CFGDenoiserParams.text_cond`` from ``on_cfg_denoiser`` (``a1111.mitigation.substitute``).

Scoring, verdicts, token significance, results, infotext and reports are the A1111 seam's, fed with Forge's
predictions in A1111's batch layout (``a1111.run.Step0``) through Forge's denoiser adapter
(:class:`~.denoiser.ForgeDenoiser`, ``KModel.apply_model``: memguard's own passes see the patcher's transformer
options, but no ControlNet residuals and no ``model_function_wrapper``). Modules: ``denoiser``, ``hook`` (what stays
in the model options), ``attention`` (the replace patches), ``sampling_pass`` (the post-CFG function), ``scripts``,
``service``. Failures are recorded and shown; they never fail or alter the generation.
"""

from __future__ import annotations

from typing import Any

from ..a1111.mitigation import substitute
from ..a1111.run import ATTR, Run
from .denoiser import ForgeDenoiser, attention_function, schedule
from .hook import LIVE, Hook
from .sampling_pass import Pass

PASS_ATTR = "_memguard_forge_pass"

__all__ = [
    "LIVE",
    "ForgeDenoiser",
    "Hook",
    "Pass",
    "attention_function",
    "install",
    "is_forge",
    "register",
    "release",
    "schedule",
]


def is_forge() -> bool:
    """Whether the WebUI is Forge: its ``modules_forge`` package imports (probed, never read from a version)."""
    try:
        import modules_forge  # noqa: F401
    except ImportError:
        return False
    return True


def register() -> None:
    """Register the one CFG callback Forge needs (mitigated conditioning); call once at script load."""
    from modules import script_callbacks

    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="memguard")


def on_cfg_denoiser(params: Any) -> None:
    """Give the mitigated images their optimized conditioning rows (Forge reads ``text_cond`` back)."""
    p = getattr(params.denoiser, "p", None)
    run = getattr(p, ATTR, None)
    if run is None or not run.mitigated_rows or getattr(p, "is_hr_pass", False):
        return
    run.guard("substituting the mitigated conditioning", substitute, run, params)


def install(p: Any) -> None:
    """``process_before_every_sampling`` body: memguard's post-CFG function on a clone of the pass's UNet patcher."""
    run = getattr(p, ATTR, None)
    if run is None or run.mode == "report" or getattr(p, "is_hr_pass", False):
        return
    run.guard("preparing Forge's sampler", _install, run, p)


def _install(run: Run, p: Any) -> None:
    objects = getattr(p.sd_model, "forge_objects", None)
    if objects is None:
        raise RuntimeError("the loaded model has no forge_objects; this is not Forge's sampling path")
    run.reset_batch()
    state = Pass(run=run, p=p, unet=objects.unet.clone(), base=objects.unet)
    LIVE[state.key] = state
    state.unet.set_model_sampler_post_cfg_function(Hook(state.key, "post_cfg"))
    objects.unet = state.unet
    setattr(p, PASS_ATTR, state)


def release(p: Any) -> None:
    """Put back the UNet patcher memguard replaced (Forge would reset it before its next pass anyway)."""
    state = getattr(p, PASS_ATTR, None)
    if state is None or state.p is not p:  # nothing, or a copy of the processing object (ADetailer's postprocess)
        return
    delattr(p, PASS_ATTR)
    objects = getattr(p.sd_model, "forge_objects", None)
    if objects is not None and objects.unet is state.unet:
        objects.unet = state.base
