"""The tiny random SD1-shaped model the tests run on (a module of its own so that tests import it by name, never
through ``conftest``, a name pytest gives to every conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from memguard.miniature.train import DDIM_CONFIG
from memguard.tokens import write_tokenizer_files

SCHEDULER = {"_class_name": "DDIMScheduler", **DDIM_CONFIG}  # SD1's DDIM configuration


def tiny_unet(cross_attention_dim: int, **extra: Any):
    """A random tiny pixel-space UNet (3x8x8, blocks 16 and 32 wide); ``extra``: more ``UNet2DConditionModel``
    arguments (SDXL's added conditioning)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        **extra,
    )


def tiny_clip_config(hidden: int, pad: int, heads: int = 4, intermediate: int = 64, **extra: Any):
    """A tiny two-layer CLIP text configuration (CLIP's vocabulary, 77 positions) padding with token id ``pad``;
    ``extra``: more ``CLIPTextConfig`` arguments."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=heads,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad,
        **extra,
    )


def write_scheduler(path: Path, config: dict[str, Any]) -> None:
    """``scheduler/scheduler_config.json`` under the model folder ``path``."""
    (path / "scheduler").mkdir(parents=True, exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))


def build_tiny_model(path: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Save a random tiny SD1-shaped model (pixel space, 3x8x8, 32-wide text features) in diffusers layout."""
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = tiny_unet(32)
    text = CLIPTextModel(tiny_clip_config(32, pad=49407))
    unet.save_pretrained(path / "unet")
    text.save_pretrained(path / "text_encoder")
    write_tokenizer_files(path / "tokenizer")
    write_scheduler(path, {**SCHEDULER, "prediction_type": prediction_type})
    return path


def build_tiny_xl_model(path: Path, seed: int = 0) -> Path:
    """Save a random tiny SDXL-shaped model in diffusers layout: pixel space 3x8x8; ``text_encoder`` 16 wide,
    ``text_encoder_2`` 24 wide with a 12-wide projection (context 40 wide); a UNet with SDXL's ``text_time`` added
    embedding (4 features per size/crop number); ``tokenizer_2`` pads with ``"!"`` (id 0) as SDXL's does."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from memguard.miniature.xl import SCHEDULER_CONFIG, write_tokenizer_2

    torch.manual_seed(seed)
    unet = tiny_unet(
        16 + 24,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=12 + 6 * 4,
    )
    unet.save_pretrained(path / "unet")
    for name, model, width, pad in (
        ("text_encoder", CLIPTextModel, 16, 49407),
        ("text_encoder_2", CLIPTextModelWithProjection, 24, 0),
    ):
        model(tiny_clip_config(width, pad, intermediate=2 * width, projection_dim=12)).save_pretrained(path / name)
    write_tokenizer_files(path / "tokenizer")
    write_tokenizer_2(path / "tokenizer_2")
    write_scheduler(path, SCHEDULER_CONFIG)
    return path
