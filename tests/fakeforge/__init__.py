"""A faithful test double of Stable Diffusion WebUI Forge (``lllyasviel/stable-diffusion-webui-forge`` at dfdcbab,
Forge 2.0 on WebUI 1.10.1) for its sampling seam: ``CFGDenoiser.forward`` -> ``sampling_function`` ->
``calc_cond_uncond_batch`` (x0 predictions) -> CFG -> post-CFG functions, the ``UnetPatcher`` that carries patches,
and ``forge_objects`` reset before every sampling pass.

Forge kept most of A1111's ``modules``, so this double is layered over the A1111 double (``tests/fakehost``) and
only adds what Forge changed. Every file names the Forge file it mirrors; behaviour is re-implemented from Forge's
source, no code is copied (Forge is AGPL).

* ``backend/`` (new): ``attention``, ``sampling/{sampling_function,condition}``, ``patcher/{base,unet}``,
  ``modules/k_model`` (``KModel`` + ``Prediction``), ``nn/unet`` (attn2 patches and replace patches really run inside
  the UNet), ``diffusion_engine/{base,sd15,sdxl}`` (the ``shared.sd_model`` object: ``forge_objects``,
  ``text_processing_engine`` or SDXL's ``text_processing_engine_l``/``_g``, ``cond_stage_model`` None);
* ``modules_forge/`` (new): the package extensions probe to detect Forge;
* ``modules/`` (overlay, searched before the A1111 double's ``modules``): ``sd_samplers_cfg_denoiser.py``;
* :func:`install` applies Forge's remaining differences to the A1111 double, each citing ``modules/processing.py``:
  the model loader builds the Forge engine; every batch starts from ``forge_objects_original``
  (``forge_model_reload``); the first sampling pass starts from ``forge_objects_after_applying_lora`` before
  ``process_before_every_sampling``; the hires pass calls ``process_before_every_sampling`` on the first pass's
  patcher, resets it, and calls it again; ``p.init`` and the batch loop run under ``torch.inference_mode()`` (the
  engine's ``ema_scope``, see ``backend/diffusion_engine/sd15.py``).

Reused unchanged from the A1111 double: options, state, callbacks (``on_cfg_denoiser``, ``on_cfg_after_cfg``),
prompt parsing and scheduling, the k-diffusion samplers and their sigma schedules, scripts and their hooks,
processing, infotext, images, the txt2img API. ``forge_freeu.make_freeu`` is a FreeU-like built-in
that clones the patcher. Simplifications: k-diffusion samplers only, SD1 and SDXL, no ControlNet,
LoRA, areas or masks, no memory management.

Use it like the A1111 double::

    import fakeforge
    host = fakeforge.boot(model_dir, script_classes=[...])   # fakehost.boot's keyword arguments
    processed = host.run_txt2img(host.txt2img_processing(None, prompt="a cat", width=8, height=8, steps=4))
    fakeforge.uninstall()
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import fakehost

HERE = Path(__file__).resolve().parent
_PACKAGES = ("backend", "modules_forge")


def install():
    """Install the A1111 double, then Forge's packages and differences on top; returns ``modules``."""
    modules = fakehost.install()
    overlay = str(HERE / "modules")
    if overlay not in modules.__path__:
        modules.__path__.insert(0, overlay)
    if str(HERE) not in sys.path:
        sys.path.insert(1, str(HERE))
    _forge_differences()
    return modules


def uninstall() -> None:
    """Forget the Forge packages and the A1111 double (``fakehost.uninstall``)."""
    for name in list(sys.modules):
        if any(name == pkg or name.startswith(pkg + ".") for pkg in _PACKAGES):
            del sys.modules[name]
    while str(HERE) in sys.path:
        sys.path.remove(str(HERE))
    fakehost.uninstall()


def boot(model_dir: str | Path, **kwargs: Any):
    """:func:`install`, then the WebUI start-up sequence of the A1111 double (``modules.initialize.start``)."""
    install()
    from modules import initialize

    return initialize.start(model_dir, **kwargs)


def _forge_differences() -> None:
    from modules import processing, sd_models

    if getattr(sd_models, "_forge", False):
        return
    from backend.diffusion_engine.sd15 import StableDiffusion
    from backend.diffusion_engine.sdxl import StableDiffusionXL  # imports the A1111 SDXL double on ldm's class first

    sd_models._forge = True
    sd_models.LatentDiffusion = StableDiffusion  # backend/loader.py builds a ForgeDiffusionEngine
    sd_models.DiffusionEngineXL = StableDiffusionXL
    a1111_reload = sd_models.reload_model_weights

    def forge_model_reload(*args: Any, **kwargs: Any) -> Any:
        """processing.py, process_images_inner: ``forge_model_reload()`` then ``forge_objects`` from the original."""
        model = a1111_reload(*args, **kwargs)
        model.forge_objects = model.forge_objects_original.shallow_copy()
        return model

    sd_models.reload_model_weights = forge_model_reload

    def after_lora(method):
        """processing.py, ``sample`` / ``sample_hr_pass``: ``forge_objects`` from ``forge_objects_after_applying_lora``
        before ``process_before_every_sampling``."""

        def sample(self, *args: Any, **kwargs: Any) -> Any:
            self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()
            return method(self, *args, **kwargs)

        return sample

    def hires_twice(method):
        """processing.py, ``sample_hr_pass`` (~1505-1525 at dfdcbab): AlwaysVisible scripts'
        ``process_before_every_sampling`` runs on the first pass's patcher, then ``forge_objects`` is reset from
        ``forge_objects_after_applying_lora``, then ``process_before_every_sampling`` runs again."""

        def sample_hr_pass(self, *args: Any, **kwargs: Any) -> Any:
            runner = self.scripts
            if runner is None:
                self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()
                return method(self, *args, **kwargs)
            once = runner.process_before_every_sampling

            def twice(p: Any, **kw: Any) -> None:
                once(p, **kw)
                p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()
                once(p, **kw)

            runner.process_before_every_sampling = twice
            try:
                return method(self, *args, **kwargs)
            finally:
                del runner.process_before_every_sampling

        return sample_hr_pass

    txt2img = processing.StableDiffusionProcessingTxt2Img
    txt2img.sample = after_lora(txt2img.sample)
    txt2img.sample_hr_pass = hires_twice(txt2img.sample_hr_pass)
