"""The tiny random SD1-shaped model the tests run on (a module of its own so that tests import it by name, never
through ``conftest``, a name pytest gives to every conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from memguard.miniature.train import DDIM_CONFIG
from memguard.tokens import write_tokenizer_files

SCHEDULER = {"_class_name": "DDIMScheduler", **DDIM_CONFIG}  # SD1's DDIM configuration


def build_tiny_model(path: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Save a random tiny SD1-shaped model (pixel space, 3x8x8, 32-wide text features) in diffusers layout."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    unet.save_pretrained(path / "unet")
    text.save_pretrained(path / "text_encoder")
    write_tokenizer_files(path / "tokenizer")
    (path / "scheduler").mkdir(parents=True, exist_ok=True)
    config = {**SCHEDULER, "prediction_type": prediction_type}
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    return path


def build_tiny_xl_model(path: Path, seed: int = 0) -> Path:
    """Save a random tiny SDXL-shaped model in diffusers layout: pixel space 3x8x8; ``text_encoder`` 16 wide,
    ``text_encoder_2`` 24 wide with a 12-wide projection (context 40 wide); a UNet with SDXL's ``text_time`` added
    embedding (4 features per size/crop number); ``tokenizer_2`` pads with ``"!"`` (id 0) as SDXL's does."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from memguard.miniature.xl import SCHEDULER_CONFIG, write_tokenizer_2

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16 + 24,
        attention_head_dim=8,
        norm_num_groups=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=12 + 6 * 4,
    )

    def config(width: int, pad: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=49408,
            hidden_size=width,
            intermediate_size=2 * width,
            projection_dim=12,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=pad,
        )

    unet.save_pretrained(path / "unet")
    CLIPTextModel(config(16, 49407)).save_pretrained(path / "text_encoder")
    CLIPTextModelWithProjection(config(24, 0)).save_pretrained(path / "text_encoder_2")
    write_tokenizer_files(path / "tokenizer")
    write_tokenizer_2(path / "tokenizer_2")
    (path / "scheduler").mkdir(parents=True, exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG))
    return path
