"""Mirrors ``backend/diffusion_engine/sdxl.py`` of Forge (``StableDiffusionXL``): ``shared.sd_model`` for an SDXL
checkpoint, over the tiny SDXL model directory (``tests/sdxl_model.py``).

* ``cond_stage_model`` is None; prompts go through ``text_processing_engine_l`` (CLIP-L: the penultimate hidden state,
  ``clip_skip=2``, no final layer norm) and ``text_processing_engine_g`` (CLIP-G: the same, plus the pooled output
  through the text projection, ``return_pooled``), both ``ClassicTextProcessingEngine`` with A1111's chunking and the
  tokenizer's padding id (49407 for L, 0 for G). The A1111 double's SDXL embedders compute exactly that and stand in;
* ``get_learned_conditioning(prompt)`` (inference mode): ``cond_l``, then ``cond_g`` and ``clip_pooled``; the vector's
  size part is ``Timestep(256)`` of ``[height, width, 0, 0, height, width]`` (no crop option), flattened and repeated
  per row; an all-empty negative prompt zeroes ``clip_pooled``, ``cond_l`` and ``cond_g``;
  ``{"crossattn": cat([cond_l, cond_g], 2), "vector": cat([clip_pooled, sizes], 1)}``;
* ``forge_objects.unet``: ``KModel.apply_model(x, sigma, c_crossattn=..., y=vector)`` (``backend/sampling/condition.py``
  compiles ``vector`` into ``y``); the UNet adds ``label_emb(y)`` (``backend/nn/unet.py``);
* ``is_sdxl``; weights are inference tensors, as for SD1 (``sd15.ForgeEngine``).
"""

from __future__ import annotations

import torch
from backend.diffusion_engine.sd15 import ForgeEngine
from modules.sd_models_xl import TIME_EMBED, DiffusionEngine, timestep_embedding


class StableDiffusionXL(ForgeEngine, DiffusionEngine):
    def __init__(self, mg_model):
        super().__init__(mg_model)
        engines = self.conditioner.embedders
        self.text_processing_engine_l, self.text_processing_engine_g = engines[0], engines[1]
        del self.conditioner
        self.cond_stage_model = None
        self.attach_forge_objects(mg_model, [mg_model.unet, mg_model.text_encoder, self.text_encoder_2])
        self.is_sdxl = True

    def embedder(self, value: float) -> torch.Tensor:
        """``backend.nn.unet.Timestep(256)`` of one number."""
        return timestep_embedding(torch.tensor([float(value)]), TIME_EMBED)

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt: list[str]) -> dict:
        cond_l = self.text_processing_engine_l(prompt)
        cond_g, clip_pooled = self.text_processing_engine_g(prompt)
        width = getattr(prompt, "width", 1024) or 1024
        height = getattr(prompt, "height", 1024) or 1024
        is_negative_prompt = getattr(prompt, "is_negative_prompt", False)
        out = [self.embedder(v) for v in (height, width, 0, 0, height, width)]
        flat = torch.flatten(torch.cat(out)).unsqueeze(dim=0).repeat(clip_pooled.shape[0], 1).to(clip_pooled)
        if is_negative_prompt and all(x == "" for x in prompt):
            clip_pooled = torch.zeros_like(clip_pooled)
            cond_l = torch.zeros_like(cond_l)
            cond_g = torch.zeros_like(cond_g)
        return {"crossattn": torch.cat([cond_l, cond_g], dim=2), "vector": torch.cat([clip_pooled, flat], dim=1)}

    def get_prompt_lengths_on_ui(self, prompt: str) -> tuple[int, int]:
        _, token_count = self.text_processing_engine_l.process_texts([prompt])
        return token_count, self.text_processing_engine_l.get_target_prompt_token_count(token_count)
