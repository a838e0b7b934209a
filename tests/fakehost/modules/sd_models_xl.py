"""Mirrors A1111 1.10.1's SDXL model as extensions see it through ``shared.sd_model``: sgm's ``DiffusionEngine`` with
the methods ``modules/sd_models_xl.py`` puts on it (``get_learned_conditioning``, ``apply_model``, ``extend_sdxl``),
its ``GeneralConditioner`` with A1111's additions (``process_texts``, ``tokenize``, ``get_target_prompt_token_count``)
and sgm's ``OpenAIWrapper`` around the UNet (``sgm/modules/encoders/modules.py``,
``sgm/modules/diffusionmodules/wrappers.py`` of ``Stability-AI/generative-models``).

* ``conditioner.embedders``: CLIP-L (``sd_hijack_clip.FrozenCLIPEmbedderForSDXLWithCustomWords`` around an sgm
  ``FrozenCLIPEmbedder`` with ``layer="hidden"`` at the penultimate layer), CLIP-G
  (``sd_hijack_open_clip.FrozenOpenCLIPEmbedder2WithCustomWords``), then three ``ConcatTimestepEmbedderND(256)`` on
  ``original_size_as_tuple``, ``crop_coords_top_left`` and ``target_size_as_tuple``; ``cond_stage_model`` is the
  conditioner (``sd_hijack``: more than one text embedder);
* ``conditioner(batch, force_zero_embeddings)``: each embedder's outputs by dimension (3: ``crossattn``, concatenated
  on channels; 2: ``vector``, concatenated on features); an embedder whose ``input_key`` is listed gives zeros;
* ``get_learned_conditioning(SdConditioning)``: sizes from the batch's ``width``/``height`` (1024 when missing), crop
  from ``opts.sdxl_crop_top``/``sdxl_crop_left``, and zero text embeddings (crossattn *and* pooled) for a negative
  prompt whose texts are all ``""``: ``{"crossattn": (N, 77k, C_l + C_g), "vector": (N, pooled + 6 * 256)}``;
* ``apply_model(x, t, cond)`` (cond entries cast in place, as ``sd_hijack_unet``) -> ``model(x, t, cond)``: the UNet
  gets ``context = cond["crossattn"]``, ``y = cond["vector"]`` and ``cond["concat"]`` on channels (A1111's
  ``c_concat`` is ignored, as sgm does for a non-inpainting model).

The UNet is diffusers' SDXL ``UNet2DConditionModel`` (``addition_embed_type="text_time"``): sgm's ``label_emb(y)`` is
its ``add_embedding(y)``, so ``y`` goes in as ``added_cond_kwargs={"text_embeds": y[:, :pooled], "time_ids":
y[:, pooled:]}`` with the UNet's ``add_time_proj`` made the identity: the conditioner embedded the sizes already
(``ConcatTimestepEmbedderND``; the same sinusoid as diffusers' ``Timesteps(256, flip_sin_to_cos=True)``), so this is
exactly diffusers' own SDXL computation on raw size ids.

The model samples in pixel space (see ``sd_models``). Kept from the double's ``LatentDiffusion``: checkpoint info,
``alphas_cumprod`` (sgm's ``LegacyDDPMDiscretization`` is SD1's schedule), decoding, ``memguard_model``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from modules import devices, sd_hijack, sd_hijack_clip, sd_hijack_open_clip, shared
from modules.sd_models import LatentDiffusion, as_ldm_unet

TIME_EMBED = 256  # ConcatTimestepEmbedderND(outdim=256) in SDXL's configuration


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """sgm's ``timestep_embedding`` (``[cos, sin]`` of ``t`` at geometric frequencies)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ConcatTimestepEmbedderND(torch.nn.Module):
    """Embeds each of the ``n`` numbers of ``(B, n)`` and concatenates: ``(B, n * outdim)``."""

    def __init__(self, outdim: int, input_key: str):
        super().__init__()
        self.outdim = outdim
        self.input_key = input_key
        self.ucg_rate = 0.0
        self.legacy_ucg_val = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape
        return timestep_embedding(x.reshape(-1), self.outdim).reshape(b, n * self.outdim)


class GeneralConditioner(torch.nn.Module):
    """sgm's ``GeneralConditioner`` (no unconditional-guidance dropout: A1111 sets ``ucg_rate`` to 0)."""

    OUTPUT_DIM2KEYS = {2: "vector", 3: "crossattn", 4: "concat", 5: "concat"}
    KEY2CATDIM = {"vector": 1, "crossattn": 2, "concat": 1}

    def __init__(self, embedders: list[torch.nn.Module]):
        super().__init__()
        self.embedders = torch.nn.ModuleList(embedders)

    def forward(self, batch: dict, force_zero_embeddings: list | None = None) -> dict:
        output: dict[str, torch.Tensor] = {}
        force_zero_embeddings = force_zero_embeddings or []
        for embedder in self.embedders:
            with torch.no_grad():
                out = embedder(batch[embedder.input_key])
            for emb in out if isinstance(out, list | tuple) else [out]:
                key = self.OUTPUT_DIM2KEYS[emb.dim()]
                if embedder.input_key in force_zero_embeddings:
                    emb = torch.zeros_like(emb)
                output[key] = torch.cat((output[key], emb), self.KEY2CATDIM[key]) if key in output else emb
        return output

    def _text_embedders(self, method: str) -> list:
        return [e for e in self.embedders if hasattr(e, method)]

    def process_texts(self, texts: list[str]) -> Any:
        """A1111's addition: the first text embedder's chunking (the embedders chunk identically)."""
        return self._text_embedders("process_texts")[0].process_texts(texts)

    def tokenize(self, texts: list[str]) -> Any:
        return self._text_embedders("tokenize")[0].tokenize(texts)

    def get_target_prompt_token_count(self, token_count: int) -> int:
        return self._text_embedders("get_target_prompt_token_count")[0].get_target_prompt_token_count(token_count)


class OpenAIWrapper(torch.nn.Module):
    """sgm's ``OpenAIWrapper``: ``diffusion_model(cat(x, c["concat"]), t, context=c["crossattn"], y=c["vector"])``,
    with ``y`` handed to the diffusers UNet (see the module docstring)."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.diffusion_model = as_ldm_unet(unet)
        self.conditioning_key = "crossattn"
        config = unet.config
        self.pooled = int(config.projection_class_embeddings_input_dim) - 6 * int(config.addition_time_embed_dim)
        unet.add_time_proj = torch.nn.Identity()  # the conditioner embeds the size ids (sgm's y is embedded)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: dict) -> torch.Tensor:
        concat = c.get("concat")
        if concat is not None:
            x = torch.cat((x, concat), dim=1)
        y = c["vector"]
        added = {"text_embeds": y[:, : self.pooled], "time_ids": y[:, self.pooled :]}
        return self.diffusion_model(x, t, encoder_hidden_states=c["crossattn"], added_cond_kwargs=added).sample


class DiffusionEngine(LatentDiffusion):
    """What ``shared.sd_model`` is for an SDXL checkpoint (``is_sdxl``; see the module docstring)."""

    def __init__(self, mg_model: Any):
        super().__init__(mg_model)
        from transformers import CLIPTextModelWithProjection

        from memguard.tokens import load_tokenizer

        path = mg_model.path
        text_g = CLIPTextModelWithProjection.from_pretrained(path / "text_encoder_2", local_files_only=True)
        text_g = text_g.eval().requires_grad_(False)
        clip_l = sd_hijack_clip.FrozenCLIPEmbedder(mg_model.tokenizer, mg_model.text_encoder)
        clip_l.layer, clip_l.layer_idx = "hidden", mg_model.text_encoder.config.num_hidden_layers - 1  # penultimate
        clip_g = sd_hijack_open_clip.FrozenOpenCLIPEmbedder2(load_tokenizer(path / "tokenizer_2"), text_g)
        hijack = sd_hijack.model_hijack
        embedders: list[torch.nn.Module] = [
            sd_hijack_clip.FrozenCLIPEmbedderForSDXLWithCustomWords(clip_l, hijack),
            sd_hijack_open_clip.FrozenOpenCLIPEmbedder2WithCustomWords(clip_g, hijack),
        ]
        embedders += [
            ConcatTimestepEmbedderND(TIME_EMBED, key)
            for key in ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")
        ]
        for embedder in embedders:
            embedder.ucg_rate = 0.0
        self.conditioner = GeneralConditioner(embedders)
        self.cond_stage_model = self.conditioner
        self.model = OpenAIWrapper(mg_model.unet)
        self.text_encoder_2 = text_g
        self.is_sd1, self.is_sdxl = False, True

    def get_learned_conditioning(self, batch: Any) -> dict:
        """``modules/sd_models_xl.py: get_learned_conditioning``."""
        for embedder in self.conditioner.embedders:
            embedder.ucg_rate = 0.0
        width = getattr(batch, "width", 1024) or 1024
        height = getattr(batch, "height", 1024) or 1024
        is_negative_prompt = getattr(batch, "is_negative_prompt", False)
        args = dict(device=devices.device, dtype=devices.dtype)
        n = len(batch)
        sdxl_conds = {
            "txt": batch,
            "original_size_as_tuple": torch.tensor([height, width], **args).repeat(n, 1),
            "crop_coords_top_left": torch.tensor(
                [shared.opts.sdxl_crop_top, shared.opts.sdxl_crop_left], **args
            ).repeat(n, 1),
            "target_size_as_tuple": torch.tensor([height, width], **args).repeat(n, 1),
        }
        force_zero = is_negative_prompt and all(x == "" for x in batch)
        return self.conditioner(sdxl_conds, force_zero_embeddings=["txt"] if force_zero else [])

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any, return_ids: bool = False) -> torch.Tensor:
        """``sd_models_xl.apply_model`` behind ``sd_hijack_unet.apply_model`` (dict entries cast in place)."""
        for key, value in cond.items():
            if isinstance(value, list):
                cond[key] = [v.to(devices.dtype_unet) if isinstance(v, torch.Tensor) else v for v in value]
            elif isinstance(value, torch.Tensor):
                cond[key] = value.to(devices.dtype_unet)
        return self.model(x_noisy.to(devices.dtype_unet), t.to(devices.dtype_unet), cond).float()
