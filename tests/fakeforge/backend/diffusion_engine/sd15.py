"""Mirrors ``backend/diffusion_engine/sd15.py`` of Forge (``StableDiffusion``, a ``ForgeDiffusionEngine``): the object
``shared.sd_model`` is on Forge, over memguard's diffusers model directory.

* ``forge_objects.unet`` is a ``UnetPatcher`` around ``KModel(IntegratedUNet2DConditionModel(unet), Prediction)``;
  ``forge_objects_original`` and ``forge_objects_after_applying_lora`` are shallow copies made at load (processing
  resets ``forge_objects`` from them);
* ``cond_stage_model`` is None (``fix_for_webui_backward_compatibility``); prompts are chunked and encoded by
  ``text_processing_engine``. Forge's ``ClassicTextProcessingEngine`` has A1111's ``tokenize_line`` /
  ``process_texts`` / ``PromptChunk`` / ``id_end``, so the A1111 double's ``FrozenCLIPEmbedderWithCustomWords`` stands
  in for it;
* ``get_learned_conditioning`` runs under ``torch.inference_mode()`` (decorated, as in Forge);
* the weights are inference tensors: ``backend/loader.py: forge_loader`` builds every component under
  ``torch.inference_mode()``, so no backward pass can go through them (:func:`ordinary_weights` undoes that for
  tests of code paths a Forge with ordinary weights would take).

Kept from the A1111 double's ``LatentDiffusion`` so that its processing and samplers run unchanged: checkpoint info,
``alphas_cumprod`` (the k-diffusion sigma schedule), ``parameterization``, decoding, and a ``model`` attribute that has
only ``conditioning_key`` (Forge's engine has no ldm model: no ``model.diffusion_model``, no ``apply_model``).
``ema_scope()`` enters ``torch.inference_mode()``: the double runs ``p.init`` and the batch loop inside it, which is
exactly the span Forge's ``process_images_inner`` runs under inference mode (``modules/processing.py``).
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch
from backend.diffusion_engine.base import ForgeObjects
from backend.modules.k_model import KModel, Prediction
from backend.nn.unet import IntegratedUNet2DConditionModel
from backend.patcher.unet import UnetPatcher
from modules.sd_models import LatentDiffusion


class ForgeEngine:
    """What every Forge engine double shares (``ForgeDiffusionEngine``): inference-tensor weights, ``forge_objects``
    around a ``KModel``, no ``apply_model``, inference mode for the batch loop."""

    def attach_forge_objects(self, mg_model, modules) -> None:
        with torch.inference_mode():
            for module in modules:
                for param in module.parameters():
                    param.data = param.data.clone()
        del self.model
        self.model = SimpleNamespace(conditioning_key="crossattn")
        prediction = mg_model.scheduler_config.get("prediction_type", "epsilon")
        kmodel = KModel(IntegratedUNet2DConditionModel(mg_model.unet), Prediction(self.alphas_cumprod, prediction))
        vae = SimpleNamespace(latent_channels=self.latent_channels)
        self.forge_objects = ForgeObjects(unet=UnetPatcher(kmodel), clip=None, vae=vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.use_distilled_cfg_scale = False

    def apply_model(self, *args, **kwargs):
        raise AttributeError("Forge's engine has no apply_model: the UNet is forge_objects.unet.model")

    @contextlib.contextmanager
    def ema_scope(self, context=None):
        with torch.inference_mode():
            yield


class StableDiffusion(ForgeEngine, LatentDiffusion):
    def __init__(self, mg_model):
        super().__init__(mg_model)
        self.text_processing_engine = self.cond_stage_model
        self.cond_stage_model = None
        self.attach_forge_objects(mg_model, [mg_model.unet, mg_model.text_encoder])

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt: list[str]) -> torch.Tensor:
        return self.text_processing_engine(prompt)


def ordinary_weights(engine: StableDiffusion) -> None:
    """Turn the engine's UNet weights back into ordinary tensors (a Forge whose loader did not use inference mode)."""
    for param in engine.forge_objects.unet.model.parameters():
        param.data = param.data.clone()
