"""Tiny random SDXL- and SD2-shaped models in diffusers layout, for the WebUI doubles (``tests/fakehost``,
``tests/fakeforge``); a module of its own so that tests import it by name (as ``tiny_model``).

SDXL (what ``diffusers``' ``StableDiffusionXLPipeline`` loads, and what A1111 / Forge build from an SDXL checkpoint):

* ``text_encoder/``: a CLIP-L-like ``CLIPTextModel`` (its penultimate hidden state is ``crossattn``'s first part);
* ``text_encoder_2/``: a CLIP-G-like ``CLIPTextModelWithProjection`` (penultimate hidden state: ``crossattn``'s second
  part; projected pooled output ``text_embeds``: the text part of ``vector``), padding token 0 ("!");
* ``unet/``: a ``UNet2DConditionModel`` with ``addition_embed_type="text_time"``, ``addition_time_embed_dim`` 256 and
  ``projection_class_embeddings_input_dim`` = pooled + 6 * 256, as real SDXL (``vector`` = pooled text, then the
  embedded ``original_size``, ``crop_coords_top_left`` and ``target_size``, two numbers each);
* ``tokenizer/``, ``tokenizer_2/`` (padding "!"), ``scheduler/``.

SD2 (768-v): one OpenCLIP-H-like text encoder, 1024 channels wide (what the WebUI recognizes SD2 by: A1111 1.10
``modules/sd_models_config.py: guess_model_config_from_state_dict``, the text projection's width), padding token 0,
v-prediction.

Both sample in pixel space like ``tiny_model``'s SD1 model (3 x 8 x 8): the doubles have no VAE.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_model import SCHEDULER, tiny_clip_config, tiny_unet, write_scheduler

from memguard.miniature.xl import write_tokenizer_2
from memguard.tokens import write_tokenizer_files

POOLED = 32  # CLIP-G's projection width (1280 in SDXL)
TIME_EMBED = 256  # each size number's embedding (SDXL's addition_time_embed_dim)
SD2_WIDTH = 1024  # OpenCLIP-H's width


def build_tiny_sdxl(path: Path, seed: int = 0) -> Path:
    """Save a random tiny SDXL-shaped model (see the module docstring) in diffusers layout under ``path``."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    text_l = CLIPTextModel(tiny_clip_config(32, pad=49407))
    text_g = CLIPTextModelWithProjection(tiny_clip_config(32, pad=0, projection_dim=POOLED))
    hidden = text_l.config.hidden_size + text_g.config.hidden_size
    unet = tiny_unet(
        hidden,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=POOLED + 6 * TIME_EMBED,
    )
    unet.save_pretrained(path / "unet")
    text_l.save_pretrained(path / "text_encoder")
    text_g.save_pretrained(path / "text_encoder_2")
    write_tokenizer_files(path / "tokenizer")
    write_tokenizer_2(path / "tokenizer_2")
    write_scheduler(path, {**SCHEDULER, "prediction_type": "epsilon"})
    return path


def build_tiny_sd2(path: Path, seed: int = 0) -> Path:
    """Save a random tiny SD2-768-v-shaped model: an OpenCLIP-H-like text encoder 1024 wide, v-prediction."""
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    text = CLIPTextModel(tiny_clip_config(SD2_WIDTH, pad=0, heads=16))
    tiny_unet(SD2_WIDTH).save_pretrained(path / "unet")
    text.save_pretrained(path / "text_encoder")
    write_tokenizer_2(path / "tokenizer")  # OpenCLIP pads with "!", as SDXL's tokenizer_2
    write_scheduler(path, {**SCHEDULER, "prediction_type": "v_prediction"})
    return path
